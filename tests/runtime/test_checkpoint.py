"""Checkpoint folders (runtime/checkpoint.py) as the commands meet them: missing weights, an empty
run folder and an unknown format version are one-line errors naming the folder. The shipped
models (resolve by name) are in test_shipped_models.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import error_line, invoke, tiny_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    tiny_model(0, max_seq_len=256, attn_layers=["local", "lsh"], local_window=16).save_pretrained(folder)
    return folder


def test_cli_checkpoint_missing_files(tmp_path, checkpoint):
    """A folder without weights, a run folder without checkpoints and a checkpoint of an unknown
    format are each one error line that names the folder and what is wrong."""
    path = tmp_path / "g.fa"
    path.write_text(">g\n" + "ACGTTGCA" * 40 + "\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((checkpoint / "config.json").read_text())  # no model.safetensors
    line = error_line(invoke("embed", str(path), "--checkpoint", str(broken), "--out", str(tmp_path / "e.npz")))
    assert "model.safetensors" in line and str(broken) in line
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert "holds no checkpoint" in error_line(invoke("embed", str(path), "--checkpoint", str(empty),
                                                      "--out", str(tmp_path / "e.npz")))
    old = tmp_path / "old_version"
    old.mkdir()
    (old / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["format_version"] = 99
    (old / "config.json").write_text(json.dumps(cfg))
    assert "format 99" in error_line(invoke("embed", str(path), "--checkpoint", str(old),
                                            "--out", str(tmp_path / "e.npz")))
    assert not (tmp_path / "e.npz").exists()
