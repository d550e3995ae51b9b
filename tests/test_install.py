"""A real install: the wheel carries the configs and the default genome (package data read with
importlib.resources), so ``seqformer pretrain`` with no arguments works in an empty folder, away
from the repository."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{args}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.mark.slow
def test_wheel_installed_elsewhere_pretrains_on_its_bundled_genome(tmp_path: Path) -> None:
    """Build the wheel from a copy of the source tree, install it (no dependencies: this
    interpreter has them) into a folder of its own, and run the console script's no-argument
    ``pretrain --max-time 30`` in an empty folder: it must use the config and genome inside the
    installed package, not the repository's."""
    import importlib.util

    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed here (pip wheel --no-build-isolation needs it): pip install setuptools")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", "runs", "venv", ".venv", "results"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
          src], timeout=300)
    wheel = next((tmp_path / "dist").glob("seqformer-*.whl"))
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel], timeout=300)
    shutil.rmtree(src)  # nothing may come from the source tree
    work = tmp_path / "empty"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1",
           "SEQFORMER_CACHE_DIR": str(tmp_path / "cache")}
    where = _run([sys.executable, "-c", "import reformer_seq, pipelines; print(reformer_seq.__file__); "
                  "print(pipelines.__file__)"], cwd=work, env=env).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    if (ROOT / "models" / "ecoli" / "config.json").is_file():  # the shipped models travel in the wheel
        shipped = _run([sys.executable, "-c", "from reformer_seq.runtime.checkpoint import shipped_model; "
                        "print(shipped_model('ecoli'))"], cwd=work, env=env).stdout.strip()
        assert Path(shipped).is_relative_to(site) and (Path(shipped) / "model.safetensors").is_file(), shipped
    res = _run([site / "bin" / "seqformer", "pretrain", "--max-time", "30", "--out", "r", "--quiet"], cwd=work,
               env=env, timeout=600)
    assert "steps in" in res.stdout and "validation" in res.stdout, res.stdout
    run = json.loads((work / "r" / "run.json").read_text())
    assert [Path(p).name for p in run["fasta"]] == ["Ecoli_K12_MG1655.fasta.gz"]
    assert Path(run["fasta"][0]).is_relative_to(site), run["fasta"]
    assert (work / "r" / "best.json").is_file()
    help_text = _run([site / "bin" / "seqformer", "pretrain", "--help"], cwd=work, env=env).stdout
    assert "configs/default.yaml" in help_text
