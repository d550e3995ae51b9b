"""The command group (pipelines/cli.py): --version, --help that teaches with examples, and a bad
config file met on the command line is one error line (exit 2) with no traceback. (The config
loader itself: tests/test_config.py.)"""
from __future__ import annotations

import yaml

from helpers import PHIX, TINY, invoke


def test_version_and_help():
    res = invoke("--version")
    assert res.exit_code == 0 and "seqformer, version" in res.output
    res = invoke("pretrain", "--help")
    assert res.exit_code == 0 and "Examples" in res.output and "--resume" in res.output


def test_unknown_config_key_is_a_clear_error(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["model"]["dimm"] = 64
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = invoke("pretrain", str(PHIX), "--config", str(path), "--out", str(tmp_path / "r"))
    assert res.exit_code == 2
    assert "unknown key 'dimm' in model; did you mean 'dim'?" in res.output
    assert "Traceback" not in res.output
