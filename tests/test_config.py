"""The run config loader (reformer_seq/config.py) as a user meets it: an unknown key is one error
line naming the key and the nearest known one."""
from __future__ import annotations

import yaml

from helpers import PHIX, TINY, invoke


def test_unknown_config_key_is_a_clear_error(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["model"]["dimm"] = 64
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = invoke("pretrain", str(PHIX), "--config", str(path), "--out", str(tmp_path / "r"))
    assert res.exit_code == 2
    assert "unknown key 'dimm' in model; did you mean 'dim'?" in res.output
    assert "Traceback" not in res.output
