"""The process-wide tuning switch (runtime/tuning.py): off for library callers, on inside
runtime_tuning() and inside every seqformer command, restored after."""
from __future__ import annotations

import copy

from helpers import PHIX, TINY, invoke
from reformer_seq.config import load_run_config
from reformer_seq.errors import ConfigError
from reformer_seq.tasks.training import pretrain


def test_process_wide_tuning_is_off_for_library_users_and_on_in_the_cli(tmp_path, monkeypatch):
    """pretrain() called from Python leaves the garbage collector alone (gc.freeze is part of the
    process-wide tuning, off by default); inside runtime_tuning() it freezes for the run and
    unfreezes after. Every seqformer command runs inside the switch and restores it on exit."""
    import gc

    from reformer_seq import process_tuning, runtime_tuning

    cfg = load_run_config(TINY, {"train": {"max_steps": 2, "eval_every": 100, "device": "cpu"}})
    seen = []
    record = lambda step, bpb: seen.append((process_tuning(), gc.get_freeze_count()))  # noqa: E731
    assert not process_tuning()
    pretrain([PHIX], copy.deepcopy(cfg), tmp_path / "a", progress=False, echo=lambda s: None, on_step=record)
    assert seen and all(s == (False, 0) for s in seen), seen
    seen.clear()
    with runtime_tuning():
        pretrain([PHIX], copy.deepcopy(cfg), tmp_path / "b", progress=False, echo=lambda s: None, on_step=record)
    assert seen and all(on and frozen > 0 for on, frozen in seen), seen
    assert gc.get_freeze_count() == 0 and not process_tuning()

    import reformer_seq.tasks.training as T

    def fake_pretrain(*args, **kw):
        seen.append(("cli", process_tuning()))
        raise ConfigError("stop here")

    seen.clear()
    monkeypatch.setattr(T, "pretrain", fake_pretrain)
    res = invoke("pretrain", str(PHIX), "--config", str(TINY), "--out", str(tmp_path / "c"))
    assert res.exit_code == 2 and "stop here" in res.output
    assert seen == [("cli", True)] and not process_tuning()  # on inside the command, restored after
