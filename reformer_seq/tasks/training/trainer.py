"""Pretraining: the training loop, validation, checkpoints, exact resume, and multi-process runs.

AdamW with linear warmup and cosine decay, gradient clipping and accumulation, optional bf16
autocast (CPU and GPU) or fp16 with a gradient scaler (GPU). Every ``eval_every`` steps the
model is scored on the held-out part of each record (bits per base for the causal objective,
bits per masked base for the masked one). Metrics go to ``metrics.jsonl`` and a loss-curve PNG.

Checkpoints (see :mod:`.checkpoint`) carry the optimizer, scheduler, step, RNG state and data
position, so ``resume=True`` continues exactly: the losses after resuming equal those of an
uninterrupted run. SIGINT/SIGTERM finish the current step, save a checkpoint and stop.

Multi-process: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank trains on its own shard of the
windows; gradients are averaged across ranks with one all-reduce per optimizer step (gloo on
CPU, NCCL on GPU, one process per GPU; every collective, the small ones included, runs on
tensors of the training device, as NCCL requires). The reversible stack accumulates parameter gradients inside its own
backward, several times per parameter, which ``DistributedDataParallel``'s once-per-parameter
hooks do not allow; an explicit all-reduce of the flattened gradients is equivalent and as
cheap for models of this size. Only rank 0 writes files.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from ...model.attention import kernel as kernels

from ...runtime import tuning as runtime
from ...runtime.checkpoint import STATE_FILE, resolve_checkpoint, save_checkpoint
from ...runtime.device import autocast, resolve_device
from ...runtime.files import atomic_write, atomic_write_json, atomic_write_text
from ...config import RunConfig, load_run_config
from ...errors import CheckpointError, ConfigError, InputError
from ...genome.encoded import file_sha256
from ...model.lm import ReformerLM
from ...runtime.resources import resource
from ...genome.tokenizers import make_tokenizer
from ...genome.windows import datasets_from_config
from ...genome.batches import make_collator, make_dataloader, set_epoch

LN2 = math.log(2.0)
DEFAULT_GENOME = "Ecoli_K12_MG1655.fasta.gz"


def default_genome() -> Path:
    """The genome ``seqformer pretrain`` trains on when no FASTA is given (E. coli K-12 MG1655,
    shipped with the package: :mod:`.resources`)."""
    return resource("data", DEFAULT_GENOME)


@dataclass
class TrainResult:
    """What a run did."""

    run_dir: Path
    step: int
    wall_time: float  # seconds, this invocation
    train_time: float  # seconds of training in total, resumed runs included
    val_bits_per_base: Optional[float]
    best_val_bits_per_base: Optional[float]
    checkpoint: Optional[Path]
    stopped_by: str  # max_steps | max_time | signal
    tokens_per_second: float
    history: list[dict] = field(default_factory=list)
    signal: Optional[int] = None  # the signal that stopped the run, if any
    is_main: bool = True  # False on ranks > 0 of a multi-process run


# ---------------------------------------------------------------------- small pieces
def lr_at(step: int, base_lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``base_lr * min_ratio`` at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]
                   ) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases or embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy (nats) over targets (labels != -100), and the number of targets."""
    n = int((labels != -100).sum())
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss, n


class _Dist:
    """Rank bookkeeping and the collectives, on tensors of the training device (NCCL takes only
    CUDA tensors, gloo CPU ones); a no-op without torch.distributed (one process)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        self.started_here = False
        if self.world > 1 and not torch.distributed.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)  # NCCL's barrier and collectives use the current device
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.started_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def tensor(self, values: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """A small tensor on the device the collectives run on."""
        return torch.tensor(values, dtype=dtype, device=self.device)

    def all_reduce_(self, t: torch.Tensor, average: bool = True, op: str = "sum") -> torch.Tensor:
        """Reduce ``t`` (on the training device) over the ranks in place: ``op`` sum, min or max;
        ``average`` divides a sum by the number of ranks."""
        if self.world > 1:
            torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op.upper()))
            if average:
                t /= self.world
        return t

    def average_gradients(self, model: torch.nn.Module) -> None:
        if self.world == 1:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])  # on the parameters' (the training) device
        self.all_reduce_(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        if self.world > 1:
            for p in model.parameters():
                torch.distributed.broadcast(p.data, 0)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``t`` (e.g. an RNG state, a CPU tensor), through the device, back on ``t``'s device."""
        if self.world == 1:
            return [t]
        src = t.to(self.device)
        n = torch.distributed.get_world_size() if torch.distributed.is_initialized() else self.world
        out = [torch.empty_like(src) for _ in range(n)]
        torch.distributed.all_gather(out, src)
        return [o.to(t.device) for o in out]

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank (so all ranks stop together)."""
        if self.world == 1:
            return flag
        return bool(self.all_reduce_(self.tensor([1.0 if flag else 0.0]), average=False).item() > 0)

    def check_same_parameters(self, model: torch.nn.Module, tol: float = 1e-5) -> float:
        """The largest difference of any parameter from rank 0's; RuntimeError above ``tol``
        (the ranks must hold one model: gradient averaging keeps them equal)."""
        if self.world == 1:
            return 0.0
        flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])  # (n_params,)
        ref = flat.clone()
        torch.distributed.broadcast(ref, 0)
        drift = float(self.all_reduce_((flat - ref).abs().max().reshape(1), average=False, op="max").item())
        if drift > tol:
            raise RuntimeError(f"ranks' parameters diverged by {drift:.2e}; gradient averaging failed")
        return drift

    def close(self, finished: bool = False) -> None:
        if self.started_here:
            try:
                if finished:  # every rank arrives before any tears the group down: a rank that
                    # destroyed its gloo group while a peer still used it could end the peer with
                    # std::terminate at exit (seen once in 8 two-process runs)
                    torch.distributed.barrier()
            finally:
                torch.distributed.destroy_process_group()


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------- validation
@torch.no_grad()
def validation_bits(model: torch.nn.Module, loader: Iterator[dict], device: torch.device, precision: str,
                    max_batches: int = 0) -> tuple[float, int]:
    """(bits per target base, number of targets) of ``model`` over ``loader``'s batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            x, labels, mask = (batch[k].to(device) for k in ("input_ids", "labels", "attention_mask"))
            with autocast(device, precision):
                logits = model(x, mask=None if bool(mask.all()) else mask)
            loss, n = lm_loss(logits, labels)
            total += float(loss)
            count += n
    finally:
        model.train(was_training)
    return (total / max(count, 1) / LN2, count)


# ---------------------------------------------------------------------- the run folder
def _run_files(run: Path) -> dict[str, Path]:
    return {"config": run / "config.yaml", "run": run / "run.json", "metrics": run / "metrics.jsonl",
            "plot": run / "loss_curve.png", "checkpoints": run / "checkpoints"}


def _has_checkpoints(run: Path) -> bool:
    ck = run / "checkpoints"
    return ck.is_dir() and any(ck.glob("step-*"))


def _prune_checkpoints(run: Path, keep_last: int) -> None:
    steps = sorted((run / "checkpoints").glob("step-*"))
    keep = set(steps[-keep_last:]) if keep_last > 0 else set()
    for name in ("best.json", "latest.json"):
        p = run / name
        if p.is_file():
            try:
                keep.add(run / json.loads(p.read_text())["path"])
            except (ValueError, KeyError):
                pass
    for s in steps:
        if s not in keep:
            shutil.rmtree(s, ignore_errors=True)
    for tmp in (run / "checkpoints").glob(".step-*"):  # leftovers of a killed write
        shutil.rmtree(tmp, ignore_errors=True)


def plot_loss_curve(metrics_path: Path, png_path: Path) -> None:
    """Train (smoothed) and validation bits per base against step, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["bits_per_base"]) for r in rows if r.get("kind") == "train"]
    val = [(r["step"], r["bits_per_base"]) for r in rows if r.get("kind") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        s, b = zip(*train)
        ax.plot(s, b, lw=0.8, alpha=0.5, label="train")
    if val:
        s, b = zip(*val)
        ax.plot(s, b, "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per base")
    values = [b for _, b in val] + [b for _, b in train[len(train) // 10:]]
    if values:  # the first steps' large losses would flatten everything else
        lo, hi = min(values), max(values)
        ax.set_ylim(lo - 0.02, hi + 0.05)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
    plt.close(fig)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows written after ``step`` (by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------- the loop
def pretrain(fasta: Sequence[str | Path], config: RunConfig, out_dir: str | Path, resume: bool = False,
             progress: bool = True, echo: Callable[[str], None] = print,
             on_step: Optional[Callable[[int, float], None]] = None) -> TrainResult:
    """Train a ReformerLM on the genomes in ``fasta`` (default: the bundled E. coli genome).

    ``out_dir`` becomes the run folder. With ``resume`` the run continues from its latest
    checkpoint, using the run's saved config (``max_steps`` and ``max_time`` are taken from
    ``config``, so a finished run can be extended). ``on_step(step, bits_per_base)`` is called
    after every optimizer step.
    """
    t_start = time.perf_counter()
    run = Path(out_dir)
    files = _run_files(run)
    if resume:
        if not _has_checkpoints(run):
            raise CheckpointError(f"{run}: nothing to resume (no checkpoints/step-* folder); start a new run "
                                  f"without --resume")
        saved = load_run_config(files["config"])
        saved.train.max_steps, saved.train.max_time = config.train.max_steps, config.train.max_time
        config = saved
        if not fasta:
            fasta = json.loads(files["run"].read_text())["fasta"]
    elif _has_checkpoints(run):
        raise ConfigError(f"{run}: already holds a run's checkpoints; pass --resume to continue it, or choose "
                          f"another --out")
    fasta = [Path(p) for p in fasta] or [default_genome()]
    mcfg, dcfg, tcfg = config.model, config.data, config.train

    tokenizer = make_tokenizer(dcfg.alphabet)
    mcfg.vocab_size = tokenizer.vocab_size
    if dcfg.seq_len > mcfg.max_seq_len:
        raise ConfigError(f"data.seq_len {dcfg.seq_len:,} exceeds model.max_seq_len {mcfg.max_seq_len:,}; lower "
                          f"--seq-len or use a config with a longer max_seq_len (configs/long.yaml)")
    if tcfg.objective == "masked" and mcfg.causal:
        raise ConfigError("train.objective 'masked' needs a bidirectional model: set model.causal: false")
    if tcfg.objective == "causal" and not mcfg.causal:
        raise ConfigError("train.objective 'causal' needs model.causal: true (next-base prediction must not see "
                          "the future)")
    mcfg.validate()

    device = resolve_device(tcfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    dist = _Dist(device)
    try:
        result = _train(fasta, config, run, files, resume, device, dist, tokenizer, progress, echo, t_start, on_step)
    except BaseException:
        dist.close()  # no barrier: the other ranks may never get there
        raise
    dist.close(finished=True)
    return result


def _train(fasta, config: RunConfig, run: Path, files: dict, resume: bool, device: torch.device, dist: _Dist,
           tokenizer, progress: bool, echo, t_start: float, on_step) -> TrainResult:
    from tqdm.auto import tqdm

    mcfg, dcfg, tcfg = config.model, config.data, config.train
    train_ds, val_ds = datasets_from_config([str(p) for p in fasta], dcfg, seed=tcfg.seed)
    if len(train_ds) == 0:
        raise InputError(f"{', '.join(map(str, fasta))}: no training windows of {dcfg.seq_len:,} bases (genome too "
                         f"short or mostly N); lower --seq-len")
    collate = make_collator(tcfg.objective, tokenizer, dcfg.mask_prob, dcfg.mask_span, seed=tcfg.seed)
    train_loader = make_dataloader(train_ds, tcfg.batch_size, collate, shuffle=True, seed=tcfg.seed,
                                   num_workers=tcfg.num_workers)
    val_collate = make_collator(tcfg.objective, tokenizer, dcfg.mask_prob, dcfg.mask_span, seed=tcfg.seed + 1)
    val_loader = make_dataloader(val_ds, tcfg.batch_size, val_collate, shuffle=False, seed=tcfg.seed,
                                 rank=0, world_size=1) if len(val_ds) else None

    torch.manual_seed(tcfg.seed)
    model = ReformerLM(mcfg).to(device)
    dist.broadcast_parameters(model)
    opt = make_optimizer(model, tcfg.lr, tcfg.weight_decay, tcfg.betas)
    # The cosine schedule's length: max_steps, or, with a time budget, the steps that fit in it
    # (estimated once from the first steps' speed, then fixed and saved with the run).
    horizon = {"steps": tcfg.max_steps, "fixed": tcfg.max_time is None}
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_at(s, 1.0, tcfg.warmup_steps, horizon["steps"], tcfg.min_lr_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=(tcfg.precision == "fp16"))

    step, epoch, batch_in_epoch, trained_before = 0, 0, 0, 0.0
    best_val: Optional[float] = None
    tokens_seen = 0
    if resume:
        ck = resolve_checkpoint(run, prefer="latest")
        state = torch.load(ck / STATE_FILE, map_location="cpu", weights_only=True)
        from ...runtime.checkpoint import load_model_weights
        load_model_weights(model, ck, map_location=str(device))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        horizon.update(state.get("horizon", horizon))
        trained_before, best_val, tokens_seen = state["train_time"], state.get("best_val"), state["tokens_seen"]
        torch.set_rng_state(state["rng"]["torch"][dist.rank] if dist.rank < len(state["rng"]["torch"])
                            else state["rng"]["torch"][0])
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state(state["rng"]["cuda"][min(dist.rank, len(state["rng"]["cuda"]) - 1)], device)
        if dist.main:
            _truncate_metrics(files["metrics"], step)
            echo(f"resuming {run} from step {step:,} ({ck.name})")
    else:
        torch.manual_seed(tcfg.seed + 1000 * dist.rank)  # dropout/hash draws differ per rank
        if dist.main:
            run.mkdir(parents=True, exist_ok=True)
            atomic_write_text(files["config"], _yaml(config.to_dict()))
            atomic_write_json(files["run"], {"fasta": [str(Path(p).resolve()) for p in fasta],
                                             "world_size": dist.world})
            files["metrics"].unlink(missing_ok=True)

    meta_data = {"paths": [str(Path(p).resolve()) for p in fasta],
                 "sha256": [file_sha256(p) for p in fasta] if dist.main else [],
                 "alphabet": dcfg.alphabet, "seq_len": dcfg.seq_len, "stride": dcfg.stride,
                 "val_fraction": dcfg.val_fraction, "max_n_fraction": dcfg.max_n_fraction,
                 "train_windows": len(train_ds), "val_windows": len(val_ds)}

    def batches() -> Iterator[dict]:
        nonlocal epoch, batch_in_epoch
        while True:
            set_epoch(train_loader, epoch)
            it = iter(train_loader)
            for _ in range(batch_in_epoch):  # resume mid-epoch: same order, skip what was used
                next(it)
            for b in it:
                batch_in_epoch += 1
                yield b
            epoch, batch_in_epoch = epoch + 1, 0

    def save(val: Optional[float]) -> Path:
        nonlocal best_val
        rng_t = [torch.get_rng_state()]
        rng_c = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
        if dist.world > 1:  # every rank's RNG state, gathered to rank 0
            rng_t = dist.gather(rng_t[0])
            if rng_c:
                rng_c = dist.gather(rng_c[0])
        if not dist.main:
            return run
        is_best = val is not None and (best_val is None or val < best_val)
        if is_best:
            best_val = val
        state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "horizon": dict(horizon),
                 "rng": {"torch": rng_t, "cuda": rng_c}, "train_time": train_time(), "best_val": best_val,
                 "tokens_seen": tokens_seen}
        meta = {"step": step, "objective": tcfg.objective, "val_bits_per_base": val, "train_data": meta_data,
                "tokens_seen": tokens_seen}
        folder = save_checkpoint(model, mcfg, tokenizer.spec(), files["checkpoints"] / f"step-{step:07d}",
                                 training_state=state, meta=meta)
        pointer = {"step": step, "path": f"checkpoints/{folder.name}", "val_bits_per_base": val}
        atomic_write_json(run / "latest.json", pointer)
        if is_best or not (run / "best.json").is_file():
            atomic_write_json(run / "best.json", pointer)
        _prune_checkpoints(run, tcfg.keep_last)
        return folder

    def log(row: dict) -> None:
        if dist.main:
            with open(files["metrics"], "a") as f:
                f.write(json.dumps(row) + "\n")

    t_loop = time.perf_counter()
    train_time = lambda: trained_before + (time.perf_counter() - t_loop)  # noqa: E731

    def validate(final: bool = False) -> Optional[float]:
        """Bits per base on the held-out split: ``eval_batches`` batches, or all of it at the end."""
        if val_loader is None:
            return None
        bpb, n = validation_bits(model, val_loader, device, tcfg.precision, 0 if final else tcfg.eval_batches)
        log({"kind": "val", "step": step, "bits_per_base": bpb, "targets": n, "time": train_time()})
        return bpb

    model.train()
    data = batches()
    probe_step, probe_t0 = max(10, tcfg.warmup_steps + 5), (step, train_time())
    bar = tqdm(total=horizon["steps"], initial=step, disable=not (progress and dist.main), unit="step",
               dynamic_ncols=True, desc="pretrain")
    stopped_by, last_val, last_ck = "max_steps", None, None
    val_step, saved_step = -1, -1  # the step of the last validation / checkpoint
    history: list[dict] = []
    window_tokens, window_t = 0, time.perf_counter()
    # With process-wide tuning on (runtime.py; the CLI's default), everything built so far
    # (modules, torch, Biopython) leaves the cyclic GC's generations for the run: their full
    # passes otherwise walk it during the steps (~3-4% of a 64K-token step's CPU time).
    with runtime.frozen_gc(), _StopFlag() as stop:
        while step < tcfg.max_steps:
            if tcfg.max_time is not None and dist.agree(train_time() >= tcfg.max_time):
                stopped_by = "max_time"
                break
            opt.zero_grad(set_to_none=True)
            loss_sum, n_sum = 0.0, 0
            for _ in range(tcfg.grad_accum):
                batch = next(data)
                x, labels, mask = (batch[k].to(device) for k in ("input_ids", "labels", "attention_mask"))
                with autocast(device, tcfg.precision):
                    logits = model(x, mask=None if bool(mask.all()) else mask)
                loss, n = lm_loss(logits, labels)
                scaler.scale(loss / max(n, 1) / tcfg.grad_accum).backward()
                loss_sum += float(loss.detach())
                n_sum += n
                tokens_seen += int(mask.sum()) * dist.world
                window_tokens += int(mask.sum()) * dist.world
            dist.average_gradients(model)
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            if not horizon["fixed"] and step >= probe_step:
                horizon["steps"] = _fit_horizon(step, train_time(), probe_t0, tcfg, dist)
                horizon["fixed"] = True
                bar.total = horizon["steps"]
            if step == 2:
                probe_t0 = (step, train_time())
            stats = dist.all_reduce_(dist.tensor([loss_sum, float(n_sum)]), average=False).tolist()
            bpb = float(stats[0] / max(float(stats[1]), 1.0)) / LN2
            history.append({"step": step, "bits_per_base": bpb})
            if on_step is not None:
                on_step(step, bpb)
            if step % tcfg.log_every == 0 or step == 1:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_t, 1e-9)
                log({"kind": "train", "step": step, "loss": bpb * LN2, "bits_per_base": bpb,
                     "lr": sched.get_last_lr()[0], "tokens_per_s": tps, "time": train_time()})
                window_tokens, window_t = 0, now
                bar.set_postfix(bpb=f"{bpb:.3f}", tok_s=f"{tps:,.0f}",
                                val="-" if last_val is None else f"{last_val:.3f}")
            bar.update(1)
            if step % tcfg.eval_every == 0:
                last_val, val_step = validate(), step
                if dist.main:
                    plot_loss_curve(files["metrics"], files["plot"])
            if step % tcfg.save_every == 0:
                last_ck, saved_step = save(last_val if val_step == step else None), step
            if dist.agree(stop.signum is not None):
                stopped_by = "signal"
                break
        bar.close()
        # the final model is validated on the whole held-out split and saved
        last_val, val_step = validate(final=True), step
        last_ck, saved_step = save(last_val), step
        if dist.main and files["metrics"].is_file():
            plot_loss_curve(files["metrics"], files["plot"])
        signum = stop.signum
    kernels.release_buffers()  # the attention kernel's kept work buffers
    dist.check_same_parameters(model)  # ranks must hold one model
    wall = time.perf_counter() - t_start
    result = TrainResult(run_dir=run, step=step, wall_time=wall, train_time=train_time(),
                         val_bits_per_base=last_val, best_val_bits_per_base=best_val, checkpoint=last_ck,
                         stopped_by=stopped_by, tokens_per_second=tokens_seen / max(train_time(), 1e-9),
                         history=history, signal=signum, is_main=dist.main)
    if dist.main:
        atomic_write_json(run / "result.json", {k: (str(v) if isinstance(v, Path) else v)
                                                for k, v in result.__dict__.items() if k != "history"})
    return result


def _fit_horizon(step: int, now: float, since: tuple[int, float], tcfg, dist: _Dist) -> int:
    """Steps that fit in ``tcfg.max_time`` at the speed measured since step ``since[0]`` (a 10%
    margin for validation and checkpoints), capped by ``max_steps``; the same on every rank."""
    s0, t0 = since
    per_step = (now - t0) / max(step - s0, 1)
    fit = step + int(0.9 * (tcfg.max_time - now) / max(per_step, 1e-9))
    t = dist.all_reduce_(dist.tensor([float(min(tcfg.max_steps, max(step + 1, fit)))]), average=False, op="min")
    return int(t.item())


def _yaml(d: dict) -> str:
    import yaml

    return "# resolved run config written by seqformer pretrain\n" + yaml.safe_dump(d, sort_keys=False)
