"""The command group (pipelines/cli.py): --version, and --help that teaches with examples."""
from __future__ import annotations

from helpers import invoke


def test_version_and_help():
    res = invoke("--version")
    assert res.exit_code == 0 and "seqformer, version" in res.output
    res = invoke("pretrain", "--help")
    assert res.exit_code == 0 and "Examples" in res.output and "--resume" in res.output
