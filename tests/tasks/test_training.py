"""`seqformer pretrain`: a tiny run through the CLI, exact resume, a killed run, signals,
two processes, input errors. (A config error on the command line and --version:
tests/cli/test_cli.py; the process-wide tuning switch: tests/runtime/test_tuning.py.)"""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import PHIX, TINY, invoke, metrics, spawn, tiny_config, train_ranks
from reformer_seq.tasks.pretrained import load_pretrained
from reformer_seq.runtime.checkpoint import resolve_checkpoint
from reformer_seq.config import load_run_config
from reformer_seq.tasks.training import pretrain
from reformer_seq.tasks.training.distributed import Dist
from reformer_seq.tasks.training.optim import fit_horizon, lr_at


@pytest.mark.slow
def test_tiny_pretrain_through_cli(tmp_path):
    run = tmp_path / "run"
    res = invoke("pretrain", str(PHIX), "--config", str(TINY), "--out", str(run), "--max-steps", "30", "--quiet")
    assert res.exit_code == 0, res.output
    assert "30 steps" in res.output and "validation" in res.output
    for name in ("config.yaml", "metrics.jsonl", "loss_curve.png", "latest.json", "best.json", "run.json"):
        assert (run / name).is_file(), name
    train = metrics(run)
    assert train[30] < train[1] - 0.5  # it learns: from ~log2(9) toward ~2 bits per base
    model, tok, info = load_pretrained(run)
    assert info["step"] == 30 and info["objective"] == "causal"
    assert info["train_data"]["paths"] == [str(PHIX.resolve())]
    assert tok.vocab_size == model.config.vocab_size == 9
    assert len(list((run / "checkpoints").glob("step-*"))) <= 3  # keep_last 2 + best


@pytest.mark.slow
@pytest.mark.parametrize("with_copy", [False, True])
def test_resume_continues_exactly(tmp_path, with_copy):
    """Interrupted (SIGINT) and resumed, a run's losses and weights equal an uninterrupted run's,
    with dropout and random hash rotations active (and with copy attention, planted repeats and
    random position offsets)."""
    cfg = load_run_config(TINY)
    cfg.model.dropout = 0.1
    if with_copy:
        cfg.model.copy_k, cfg.model.random_position_offset, cfg.data.plant_repeats = 6, True, 0.5
    cfg.train.log_every, cfg.train.save_every, cfg.train.eval_every, cfg.train.max_steps = 1, 4, 4, 12
    full, part = tmp_path / "full", tmp_path / "part"
    pretrain([PHIX], copy.deepcopy(cfg), full, progress=False, echo=lambda s: None)

    def interrupt(step, bpb):
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)  # handled: finish the step, checkpoint, stop

    first = pretrain([PHIX], copy.deepcopy(cfg), part, progress=False, echo=lambda s: None, on_step=interrupt)
    assert first.stopped_by == "signal" and first.step == 6
    pretrain([], copy.deepcopy(cfg), part, resume=True, progress=False, echo=lambda s: None)
    a, b = metrics(full), metrics(part)
    assert sorted(b) == list(range(1, 13))  # rows after the checkpoint were not duplicated
    for step in range(1, 13):
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    ma, _, _ = load_pretrained(full)
    mb, _, _ = load_pretrained(part)
    for (n, p), q in zip(ma.state_dict().items(), mb.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        p = run / "latest.json"
        if p.is_file():
            s = json.loads(p.read_text())["step"]
            if s >= step:
                return s
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


@pytest.mark.slow
def test_killed_run_resumes_from_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, save_every=1, eval_every=1000, max_steps=100000)
    run = tmp_path / "run"
    proc = spawn("pretrain", PHIX, "--config", cfg, "--out", run, "--quiet")
    try:
        _wait_for_step(run, 3, proc)
        time.sleep(0.3)  # kill at an arbitrary point, possibly mid-write
        proc.kill()
    finally:
        proc.wait()
    ck = resolve_checkpoint(run, prefer="latest")
    model, _, info = load_pretrained(ck)  # whatever was on disk loads
    step = info["step"]
    res = invoke("pretrain", "--config", str(cfg), "--out", str(run), "--resume", "--max-steps", str(step + 3),
                 "--quiet")
    assert res.exit_code == 0, res.output
    assert f"resuming {run} from step {step:,}" in res.output
    assert json.loads((run / "latest.json").read_text())["step"] == step + 3
    assert not list((run / "checkpoints").glob(".step-*"))  # leftovers of a killed write are cleaned


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    cfg = tiny_config(tmp_path, save_every=1000, eval_every=1000, max_steps=100000, log_every=1)
    run = tmp_path / "run"
    proc = spawn("pretrain", PHIX, "--config", cfg, "--out", run, "--quiet")
    t0 = time.time()
    while not (run / "metrics.jsonl").is_file() and time.time() - t0 < 120:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "--resume" in out
    info = json.loads((run / "latest.json").read_text())
    assert info["step"] >= 1
    load_pretrained(run)


@pytest.mark.slow
def test_two_processes_train_one_model(tmp_path):
    """Two gloo ranks on the CPU: one model (the end-of-run check compares every parameter with
    rank 0's), gradients averaged, one report."""
    train_ranks(tmp_path, 2, "cpu")


class _Reached(Exception):
    pass


def test_collectives_run_on_the_training_device(monkeypatch):
    """Every collective gets tensors on the training device (NCCL rejects CPU tensors): a rank
    bookkeeper for a non-CPU device (meta, so this runs anywhere) hands each collective only
    tensors of that device, RNG states (CPU) included."""
    seen = []

    def record(name):
        def collective(*args, **kw):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, list) for t in a]
            seen.append((name, {t.device.type for t in tensors}))
            raise _Reached(name)
        return collective

    for name in ("all_reduce", "all_gather", "broadcast"):
        monkeypatch.setattr(torch.distributed, name, record(name))
    dist = Dist.__new__(Dist)
    dist.world, dist.rank, dist.local_rank, dist.started_here = 2, 0, 0, False
    dist.device = torch.device("meta")
    model = torch.nn.Linear(3, 2).to("meta")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    tcfg = load_run_config(TINY, {"train": {"max_time": 60.0}}).train
    calls = [lambda: dist.agree(True), lambda: dist.all_reduce_(dist.tensor([1.0, 2.0]), average=False),
             lambda: fit_horizon(20, 5.0, (2, 1.0), tcfg, dist), lambda: dist.gather(torch.get_rng_state()),
             lambda: dist.average_gradients(model), lambda: dist.check_same_parameters(model),
             lambda: dist.broadcast_parameters(model)]
    for call in calls:
        with pytest.raises(_Reached):
            call()
    assert len(seen) == len(calls) and all(devices == {"meta"} for _, devices in seen), seen


def test_config_and_input_errors(tmp_path):
    res = invoke("pretrain", str(tmp_path / "missing.fa"), "--config", str(TINY),
                 "--out", str(tmp_path / "r"))
    assert res.exit_code == 2 and "missing.fa" in res.output
    res = invoke("pretrain", str(PHIX), "--config", str(TINY), "--seq-len", "5000",
                 "--out", str(tmp_path / "r2"))
    assert res.exit_code == 2 and "exceeds model.max_seq_len 1,024" in res.output
    res = invoke("pretrain", str(PHIX), "--config", str(TINY), "--out", str(tmp_path / "r3"),
                 "--resume")
    assert res.exit_code == 2 and "nothing to resume" in res.output


def planted_pairs(path: Path, n_pairs: int = 20000, seed: int = 0) -> str:
    """A FASTA of random bases each followed by its complement (``a comp(a) b comp(b) ...``):
    a base tells nothing about its neighbours alone, but one of them is always its complement,
    so a model that reads both sides learns a masked base far below the 2 bits a uniform base
    costs without context. Returns the sequence."""
    comp = {"A": "T", "C": "G", "G": "C", "T": "A"}
    bases = np.random.default_rng(seed).choice(list("ACGT"), n_pairs)
    seq = "".join(b + comp[b] for b in bases)
    path.write_text(">planted_pairs\n" + seq + "\n")
    return seq


def masked_bits(model, tok, seq: str, windows: int = 4, length: int = 256, seed: int = 1) -> float:
    """Bits per masked base, computed here without the training collator: 1/8 of each window's
    bases become the mask token and the model must give the original base."""
    rng = np.random.default_rng(seed)
    ids = torch.as_tensor(tok.encode(seq), dtype=torch.long)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for w in range(windows):
            x = ids[w * length:(w + 1) * length].clone()[None]  # (1, L)
            pos = torch.from_numpy(rng.choice(length, length // 8, replace=False))
            target = x[0, pos].clone()
            x[0, pos] = tok.mask_id
            logp = torch.log_softmax(model(x).float(), -1)[0, pos]  # (L/8, vocab)
            total -= float(logp.gather(1, target[:, None]).sum())
            count += len(pos)
    return total / count / math.log(2)


@pytest.mark.slow
def test_masked_objective_trains_a_bidirectional_model(tmp_path):
    """``--objective masked`` makes the model bidirectional and it learns the masked bases: on
    planted complementary pairs, both the run's validation and an independent scoring of masked
    held-out bases fall well below the 2 bits of a context-free guess (from ~3.5 untrained). With
    wrong labels (the base after the masked one, or the unmasked bases) this fails (2.0 and 6 bits)."""
    seq = planted_pairs(tmp_path / "pairs.fa")
    cfg = tiny_config(tmp_path, eval_every=1000, save_every=1000)
    run = tmp_path / "run"
    res = invoke("pretrain", str(tmp_path / "pairs.fa"), "--config", str(cfg), "--out", str(run), "--max-steps",
                 "120", "--lr", "0.01", "--objective", "masked", "--quiet")
    assert res.exit_code == 0, res.output
    model, tok, info = load_pretrained(run)
    assert info["objective"] == "masked" and model.config.causal is False
    assert metrics(run)[1] > 3.0  # untrained: about log2(9)
    assert info["val_bits_per_base"] < 1.5, info["val_bits_per_base"]  # ~1.3
    held_out = seq[int(len(seq) * 0.9):]  # the validation split: the record's last 10%
    assert masked_bits(model, tok, held_out) < 1.5  # ~1.2


def test_learning_rate_schedule():
    assert lr_at(0, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(55, 1.0, 10, 100, 0.1) == pytest.approx(0.55)  # halfway down the cosine


def test_max_time_zero_drops_the_configs_time_budget(tmp_path):
    """--max-time 0: the config's max_time is dropped, --max-steps alone sets the schedule."""
    cfg = tiny_config(tmp_path, max_time=0.001, eval_every=1000, save_every=1000)
    run = tmp_path / "run"
    res = invoke("pretrain", str(PHIX), "--config", str(cfg), "--out", str(run), "--max-steps", "4",
                 "--max-time", "0", "--quiet")
    assert res.exit_code == 0, res.output
    assert load_run_config(run / "config.yaml").train.max_time is None
    assert json.loads((run / "latest.json").read_text())["step"] == 4
