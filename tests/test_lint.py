"""The linter and the type checker, run on the library and the CLI with the settings in pyproject.toml
([tool.ruff], [tool.mypy]); plus the single definitions they cannot see (issue 25).

``ruff check`` takes well under a second and runs with the README's ``pytest -q``; ``mypy`` takes up to a
minute without its cache, so it is marked slow and runs in CI (``.ci/run``: ``pytest -q -m slow``). Each
test is skipped only where its tool is not installed (``pip install -e ".[dev]"`` installs both).
"""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["reformer_seq", "pipelines"]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install -e '.[dev]')")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_ruff_is_clean():
    # --no-cache: nothing written into the checkout; the settings come from pyproject.toml alone
    r = _run("ruff", "check", "--no-cache", *TARGETS)
    assert r.returncode == 0, f"ruff check {' '.join(TARGETS)}:\n{r.stdout}{r.stderr}"


@pytest.mark.slow
def test_mypy_is_clean():
    r = _run("mypy", *TARGETS)
    assert r.returncode == 0, f"mypy {' '.join(TARGETS)}:\n{r.stdout}{r.stderr}"


def _module_assignments(path: Path):
    """(name, value node) of every module-level assignment in ``path``."""
    for node in ast.parse(path.read_text(), str(path)).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value is not None else []
        for t in targets:
            for name in ast.walk(t):
                if isinstance(name, ast.Name):
                    yield name.id, node.value


def _python_files():
    for folder in TARGETS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_pathlike_is_defined_once():
    where = [str(p.relative_to(ROOT)) for p in _python_files() for name, _ in _module_assignments(p)
             if name == "PathLike"]
    assert where == ["reformer_seq/types.py"], where


def test_base_token_ids_are_stated_only_in_the_tokenizer():
    """No module but genome/tokenizers.py gives a token-id constant a number of its own (``A_ID = 4``,
    ``BASE_IDS = (4, 5, 6, 7)``); they import it. And the constants are the tokenizer's encoding."""
    from reformer_seq.genome import tokenizers
    from reformer_seq.model.attention import copy_attention

    def literal_ints(value) -> bool:
        return isinstance(value, ast.Constant) and type(value.value) is int or (
            isinstance(value, (ast.Tuple, ast.List)) and bool(value.elts) and all(map(literal_ints, value.elts)))

    restated = [f"{p.relative_to(ROOT)}: {name}" for p in _python_files() if p.name != "tokenizers.py"
                for name, value in _module_assignments(p)
                if (name.endswith(("_ID", "_IDS")) or name in ("BASE_OFFSET", "N_BASES")) and literal_ints(value)]
    assert not restated, "import these from reformer_seq.genome.tokenizers:\n" + "\n".join(restated)

    tok = tokenizers.NucleotideTokenizer()
    assert tuple(tok.encode(tokenizers.BASES).tolist()) == tokenizers.BASE_IDS == tok.base_ids
    assert tokenizers.BASE_IDS == tuple(range(tokenizers.A_ID, tokenizers.A_ID + tokenizers.N_BASES))
    assert tok.decode(list(tokenizers.BASE_IDS)) == tokenizers.BASES
    assert copy_attention.FIRST_BASE_ID == tokenizers.A_ID and copy_attention.N_BASES == tokenizers.N_BASES
