"""Time budgets that hold: under ``max_time`` the learning-rate schedule follows the clock, so a
run that slows down part-way (other jobs on the machine) still decays and ends at the minimum
learning rate when the budget stops it; the throughput lines leave validation time out."""
from __future__ import annotations

import json
import time

import pytest
import torch

from helpers import PHIX, TINY
from reformer_seq.config import load_run_config
from reformer_seq.runtime.checkpoint import resolve_checkpoint
from reformer_seq.tasks.training import pretrain
from reformer_seq.tasks.training.optim import lr_at, time_progress


def test_time_progress_and_lr():
    assert time_progress(5.0, 1.0, 1.0, 11.0) == pytest.approx(0.5)
    assert time_progress(10.5, 1.0, 1.0, 11.0) == 1.0  # the next step ends past the budget: anneal now
    assert lr_at(50, 1.0, 10, 1000, 0.1, time_fraction=1.0) == pytest.approx(0.1)
    assert lr_at(50, 1.0, 10, 90, 0.1, time_fraction=0.0) == pytest.approx(0.55)  # steps still count


@pytest.fixture()
def one_thread():
    """One CPU thread: on a shared machine more threads make the tiny model's steps slow and erratic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_a_run_that_slows_down_still_anneals_and_stops_on_time(tmp_path, one_thread):
    max_time = 5.0
    cfg = load_run_config(TINY, {"train": {"max_time": max_time, "max_steps": 100_000, "eval_every": 1000,
                                           "save_every": 1000, "log_every": 1, "warmup_steps": 2}})

    def slow_down(step: int, bpb: float) -> None:  # another job takes the machine after step 15
        if step > 15:
            time.sleep(0.2)

    warm = load_run_config(TINY, {"train": {"max_steps": 1}})  # builds/loads the compiled kernels first
    pretrain([PHIX], warm, tmp_path / "warm", progress=False, echo=lambda s: None)
    res = pretrain([PHIX], cfg, tmp_path / "run", progress=False, echo=lambda s: None, on_step=slow_down)
    assert res.stopped_by == "max_time"
    assert max_time <= res.train_time < max_time + 2.0  # stopped on time (one step and the last validation)
    state = torch.load(resolve_checkpoint(tmp_path / "run") / "training_state.pt", weights_only=False)
    lrs = [g["lr"] for g in state["optimizer"]["param_groups"]]
    assert lrs == [pytest.approx(cfg.train.lr * cfg.train.min_lr_ratio, rel=1e-6)] * len(lrs), lrs
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lr = [r["lr"] for r in rows if r["kind"] == "train"]
    assert max(lr) == pytest.approx(cfg.train.lr, rel=1e-3)  # it warmed up
    assert all(b <= a + 1e-12 for a, b in zip(lr[2:], lr[3:]))  # and only decayed after warmup


@pytest.mark.slow
def test_end_of_run_validation_scales_to_a_50mb_record(tmp_path, one_thread):
    """A 50 Mb record holds out 5 Mb; the end-of-run validation scores the fixed seeded sample of
    ``val_bases`` bases (with a standard error) in seconds, not the whole split."""
    import numpy as np

    rng = np.random.default_rng(0)
    fa = tmp_path / "big.fa"
    with open(fa, "wb") as f:
        f.write(b">big synthetic 50 Mb\n")
        f.write(np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, 50_000_000)].tobytes())
        f.write(b"\n")
    cfg = load_run_config(TINY, {"train": {"max_steps": 2, "val_bases": 100_000, "eval_every": 1000,
                                           "save_every": 1000}})
    res = pretrain([fa], cfg, tmp_path / "run", progress=False, echo=lambda s: None)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if r["kind"] == "val" and r["final"]][-1]
    assert final["seconds"] < 20.0, final  # the whole 5 Mb held out would take minutes here
    assert res.val_windows == -(-100_000 // 256) and 0.9 * 100_000 < final["targets"] <= 100_000
    assert final["stderr"] is not None and 0 < final["stderr"] < 0.1
    assert 1.5 < res.val_bits_per_base < 3.5  # two steps from log2(9) toward 2 bits (random bases)
