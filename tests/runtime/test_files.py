"""Replacing a folder (a checkpoint written again) never leaves its path missing or incomplete
(reformer_seq/runtime/files.py: ``atomic_folder`` exchanges the two folders in one step)."""
from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

from reformer_seq.runtime import files

FILES = ("model.safetensors", "config.json")
exchange_here = pytest.mark.skipif(not (sys.platform.startswith("linux") or sys.platform == "darwin"),
                                   reason="no atomic exchange of two paths on this platform")


def _write(folder: Path, version: int) -> None:
    with files.atomic_folder(folder) as tmp:
        for name in FILES:
            (tmp / name).write_text(f"version {version}\n")


def _complete_version(folder: Path) -> int:
    """The version every file of ``folder`` holds; fails if the folder is missing or mixed."""
    assert folder.is_dir(), f"{folder} is missing"
    texts = {(folder / name).read_text() for name in FILES}
    assert len(texts) == 1, f"{folder} mixes versions: {texts}"
    return int(texts.pop().split()[1])


def _watch_every_step(monkeypatch, folder: Path, seen: list[int]) -> None:
    """Check the folder before and after every rename, exchange and delete that atomic_folder does."""
    def checked(real):
        def step(*args, **kwargs):
            seen.append(_complete_version(folder))
            out = real(*args, **kwargs)
            seen.append(_complete_version(folder))
            return out
        return step

    monkeypatch.setattr(files.os, "replace", checked(os.replace))
    monkeypatch.setattr(files.os, "rename", checked(os.rename))
    monkeypatch.setattr(files.shutil, "rmtree", checked(shutil.rmtree))
    monkeypatch.setattr(files, "_exchange", checked(files._exchange))


@exchange_here
def test_every_step_of_a_replacement_leaves_a_complete_folder(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints" / "step-0000100"
    _write(folder, 1)
    seen: list[int] = []
    _watch_every_step(monkeypatch, folder, seen)
    _write(folder, 2)
    assert seen[0] == 1 and seen[-1] == 2 and len(seen) >= 4, seen
    assert sorted(p.name for p in folder.parent.iterdir()) == ["step-0000100"], "the old folder was left behind"


def test_without_an_exchange_the_two_renames_still_replace_the_folder(tmp_path, monkeypatch):
    """The fallback (no exchange call on this platform or filesystem) gives the same end state."""
    folder = tmp_path / "step-0000100"
    _write(folder, 1)
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    _write(folder, 2)
    assert _complete_version(folder) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000100"]


def test_the_fallback_would_leave_a_gap(tmp_path, monkeypatch):
    """The step check can fail: the two-rename fallback has a moment with no folder."""
    folder = tmp_path / "step-0000100"
    _write(folder, 1)
    seen: list[int] = []
    _watch_every_step(monkeypatch, folder, seen)
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    with pytest.raises(AssertionError, match="is missing"):
        _write(folder, 2)


@exchange_here
def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    assert files._exchange(a, b)
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
    with pytest.raises(OSError):
        files._exchange(a, tmp_path / "missing")


@exchange_here
@pytest.mark.slow
def test_a_reader_polling_the_path_never_finds_it_missing(tmp_path):
    """Another thread replaces the folder 200 times while this one stats the path."""
    folder = tmp_path / "step-0000100"
    _write(folder, 0)
    done = threading.Event()

    def rewrite() -> None:
        try:
            for v in range(1, 201):
                _write(folder, v)
        finally:
            done.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    misses = checks = 0
    while not done.is_set():
        checks += 1
        misses += not os.path.isdir(folder)
    writer.join()
    assert misses == 0, f"the folder was missing in {misses} of {checks} checks"
    assert checks > 200 and _complete_version(folder) == 200
