"""Shared fixtures: a per-session genome cache (never ~/.cache), E. coli encoded once, the tiny
pretraining run; the slow-test switch. Plain helpers (paths, the CLI invoker, the small-model
builder) are in helpers.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import ECOLI, PHIX, TINY, invoke


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("seqformer_cache")


@pytest.fixture(autouse=True)
def _isolated_cache(session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the default genome cache at a temporary folder shared by the session."""
    monkeypatch.setenv("SEQFORMER_CACHE_DIR", str(session_cache))


@pytest.fixture(scope="session")
def ecoli_records(session_cache: Path):
    """E. coli K-12 encoded with the nucleotide tokenizer (cached once per session)."""
    from reformer_seq.genome.encoded import load_genome

    return load_genome(ECOLI, cache_dir=session_cache)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    """A run folder of the tiny config trained 20 steps on phiX174 (a real, loadable checkpoint,
    with validations at steps 10 and 20): the backbone of the fine-tuning and embedding tests, and
    the checkpoint of the CLI tests that need a trained one."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQFORMER_CACHE_DIR", str(session_cache))
        res = invoke("pretrain", PHIX, "--config", TINY, "--max-steps", 20, "--out", run, "--quiet")
    assert res.exit_code == 0, res.output
    return run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (over about 3 s: subprocesses, torchrun, kernel builds, a wheel
    install, real training runs) run with ``pytest -m slow`` or ``SEQFORMER_SLOW_TESTS=1``; CI
    (.ci/run) runs ``pytest -q`` and then ``pytest -q -m slow``."""
    if "slow" in (config.getoption("-m") or "") or os.environ.get("SEQFORMER_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: run with pytest -m slow or SEQFORMER_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
