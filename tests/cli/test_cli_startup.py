"""``seqformer --help``, ``COMMAND --help`` and ``--version`` start without importing torch
(pipelines/cli.py; reformer_seq/__init__.py loads its public names on first use), and the version
has one source (reformer_seq/version.py, which pyproject.toml reads)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest

from helpers import REPO, invoke

COMMANDS = ["pretrain", "embed", "evaluate", "score", "score-variants", "finetune", "predict"]
# runs the CLI in a fresh interpreter and reports which heavy modules it imported
_PROBE = """
import json, sys
sys.argv = ["seqformer", *json.loads(sys.argv[1])]
from pipelines.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print(json.dumps({"code": code, "loaded": sorted(m for m in ("torch", "numpy", "matplotlib", "Bio", "pysam")
                                                  if m in sys.modules)}), file=sys.stderr)
"""


def _start(*args: str) -> tuple[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(args))], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    return res.stdout, json.loads(res.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["--version"], *([c, "--help"] for c in COMMANDS)],
                         ids=lambda a: " ".join(a))
def test_help_and_version_do_not_import_torch(args):
    out, probe = _start(*args)
    assert probe["code"] == 0, out
    assert "torch" not in probe["loaded"], f"seqformer {' '.join(args)} imported {probe['loaded']}"
    assert out.strip(), "nothing printed"


@pytest.mark.slow
def test_the_probe_sees_torch_when_a_command_runs():
    """The probe can fail: a command body imports the library (and torch) before it reads its input."""
    out, probe = _start("score-variants", str(REPO / "no-such.vcf"), "--reference", str(REPO / "no-such.fa"),
                        "--checkpoint", "ecoli", "--out", str(REPO / "never-written.tsv"))
    assert probe["code"] == 2 and "torch" in probe["loaded"], probe


def test_one_version_source():
    from reformer_seq import __version__
    from reformer_seq.version import __version__ as written

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "reformer_seq.version.__version__"
    assert __version__ == written
    assert invoke("--version").output.strip() == f"seqformer, version {written}"
    hits = [p.relative_to(REPO).as_posix() for p in (REPO / "reformer_seq").rglob("*.py")
            if "__version__ =" in p.read_text() and p.name != "version.py"]
    assert not hits, f"a second version assignment: {hits}"
