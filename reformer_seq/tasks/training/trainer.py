"""Pretraining: the training loop, validation, checkpoints, exact resume, and multi-process runs.

AdamW with linear warmup and cosine decay (:mod:`.optim`), gradient clipping and accumulation,
optional bf16 autocast (CPU and GPU) or fp16 with a gradient scaler (GPU). Every ``eval_every``
steps the model is scored on a fixed, seeded sample (``val_bases``) of the held-out windows of
each record, all of the sample at the end (:mod:`.loss`: bits per base for the causal objective,
bits per masked base for the masked one, with a standard error). With ``max_time`` the
learning-rate schedule follows the clock (:mod:`.optim`). Metrics go to ``metrics.jsonl``
and a loss-curve PNG in the run folder (:mod:`.run_folder`).

Checkpoints (see :mod:`reformer_seq.runtime.checkpoint`) carry the optimizer, scheduler, step,
RNG state and data position (:class:`TrainState`), so ``resume=True`` continues exactly: the
losses after resuming equal those of an uninterrupted run. SIGINT/SIGTERM finish the current
step, save a checkpoint and stop (:mod:`.stop`).

Multi-process: under ``torchrun`` each rank trains on its own shard of the windows and the
gradients are averaged with one all-reduce per step (:mod:`.distributed`). Only rank 0 writes files.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from ...config import RunConfig
from ...errors import ConfigError, InputError
from ...genome.encoded import file_sha256
from ...genome.tokenizers import make_tokenizer
from ...genome.batches import make_collator, make_dataloader, set_epoch
from ...genome.windows import datasets_from_config
from ...model.attention import kernel as kernels
from ...model.lm import ReformerLM
from ...runtime import tuning as runtime
from ...runtime.checkpoint import STATE_FILE, load_model_weights, resolve_checkpoint, save_checkpoint
from ...runtime.device import resolve_device
from ...runtime.files import atomic_write_json
from .distributed import Dist
from .loss import LN2, batch_loss, val_sample, validation_bits
from .optim import fit_horizon, lr_at, make_optimizer, time_progress
from .run_folder import (RunFiles, append_metrics, plot_loss_curve, point_to_checkpoint, prune_checkpoints,
                         run_inputs, truncate_metrics, write_config)
from .stop import StopFlag


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
    val_stderr: Optional[float] = None  # standard error of val_bits_per_base (over the sample's batches)
    val_windows: int = 0  # windows in the validation sample (of val_bases held-out bases)


@dataclass
class TrainState:
    """What the loop carries from step to step. The first fields are saved in every checkpoint
    and restored on resume; the rest belong to this invocation."""

    horizon_steps: int  # the cosine schedule's length in steps (max_steps)
    horizon_fixed: bool  # kept for checkpoints of earlier versions (their time budgets fitted it once)
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already used
    tokens_seen: int = 0  # real (unpadded) bases, all ranks
    trained_before: float = 0.0  # seconds of training in earlier invocations
    best_val: Optional[float] = None
    warm_end: Optional[float] = None  # training time when warmup ended (time budgets: the schedule's start)
    val_seconds: float = 0.0  # seconds spent validating, earlier invocations included (left out of tokens/s)
    # this invocation only
    history: list[dict] = field(default_factory=list)  # {"step", "bits_per_base"} per step
    last_val: Optional[float] = None  # the last validation's bits per base, at val_step
    last_stderr: Optional[float] = None
    val_step: int = -1
    last_checkpoint: Optional[Path] = None
    stopped_by: str = "max_steps"
    probe: tuple[int, float] = (0, 0.0)  # (step, train time) the progress bar's step estimate is measured from
    window_tokens: int = 0  # tokens since the last train row (for its tokens_per_s)
    window_start: float = 0.0
    window_val: float = 0.0  # seconds of validation since the last train row (left out of tokens_per_s)
    time_fraction: float = 0.0  # time budgets: share of the budget used by the end of the next step
    last_clock: Optional[float] = None  # training time at the last optimizer step's end

    @property
    def horizon(self) -> dict:
        return {"steps": self.horizon_steps, "fixed": self.horizon_fixed, "warm_end": self.warm_end}


class Trainer:
    """One pretraining run on one rank: data, model, optimizer and the run folder; :meth:`run`
    trains until ``max_steps``, ``max_time`` or a signal and returns the :class:`TrainResult`."""

    def __init__(self, fasta: list[Path], config: RunConfig, files: RunFiles, resume: bool, device: torch.device,
                 dist: Dist, tokenizer, progress: bool, echo: Callable[[str], None], t_start: float,
                 on_step: Optional[Callable[[int, float], None]]):
        self.fasta, self.config, self.files, self.device, self.dist = fasta, config, files, device, dist
        self.tokenizer, self.progress, self.echo = tokenizer, progress, echo
        self.t_start, self.on_step = t_start, on_step
        self.tcfg = tcfg = config.train
        self._make_data()
        torch.manual_seed(tcfg.seed)
        self.model = ReformerLM(config.model).to(device)
        dist.broadcast_parameters(self.model)
        self.opt = make_optimizer(self.model, tcfg.lr, tcfg.weight_decay, tcfg.betas)
        # The cosine schedule ends at max_steps or, with a time budget, when the clock says so
        # (optim.time_progress: re-measured at every step, so a run that slows down still anneals).
        self.state = state = TrainState(horizon_steps=tcfg.max_steps, horizon_fixed=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(  # a lambda: LambdaLR saves no state for it
            self.opt, lambda s: lr_at(s, 1.0, tcfg.warmup_steps, state.horizon_steps, tcfg.min_lr_ratio,
                                      state.time_fraction))
        self.scaler = torch.amp.GradScaler("cuda", enabled=(tcfg.precision == "fp16"))
        if resume:
            self._restore()
        else:
            self._start()
        dcfg = config.data
        self.meta_data = {"paths": [str(Path(p).resolve()) for p in fasta],
                          "sha256": [file_sha256(p) for p in fasta] if dist.main else [],
                          "alphabet": dcfg.alphabet, "seq_len": dcfg.seq_len, "stride": dcfg.stride,
                          "val_fraction": dcfg.val_fraction, "max_n_fraction": dcfg.max_n_fraction,
                          "train_windows": len(self.train_ds), "val_windows": len(self.val_ds),
                          "val_sample_windows": len(self.val_sample)}

    # ------------------------------------------------------------------ setting up
    def _make_data(self) -> None:
        dcfg, tcfg, tok = self.config.data, self.tcfg, self.tokenizer
        self.train_ds, self.val_ds = datasets_from_config([str(p) for p in self.fasta], dcfg, seed=tcfg.seed)
        if self.dist.main:
            recs = self.train_ds.records
            self.echo(f"read {len(self.fasta):,} file{'s' * (len(self.fasta) != 1)}: {len(recs):,} records, "
                      f"{sum(len(r) for r in recs):,} bases")
        if len(self.train_ds) == 0:
            raise InputError(f"{', '.join(map(str, self.fasta))}: no training windows of {dcfg.seq_len:,} bases "
                             f"(genome too short or mostly N); lower --seq-len")
        collate = make_collator(tcfg.objective, tok, dcfg.mask_prob, dcfg.mask_span, seed=tcfg.seed)
        self.train_loader = make_dataloader(self.train_ds, tcfg.batch_size, collate, shuffle=True, seed=tcfg.seed,
                                            num_workers=tcfg.num_workers)
        val_collate = make_collator(tcfg.objective, tok, dcfg.mask_prob, dcfg.mask_span, seed=tcfg.seed + 1)
        self.val_sample = val_sample(self.val_ds, dcfg.seq_len, tcfg.val_bases, tcfg.seed)
        self.val_loader = make_dataloader(self.val_sample, tcfg.batch_size, val_collate, shuffle=False,
                                          seed=tcfg.seed, rank=0, world_size=1) if len(self.val_ds) else None

    def _restore(self) -> None:
        """Continue from the run's latest checkpoint: weights, optimizer, schedule, data position, RNG."""
        st, dist, device, run = self.state, self.dist, self.device, self.files.root
        ck = resolve_checkpoint(run, prefer="latest")
        saved = torch.load(ck / STATE_FILE, map_location="cpu", weights_only=True)
        load_model_weights(self.model, ck, map_location=str(device))
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        if "scaler" in saved:
            self.scaler.load_state_dict(saved["scaler"])
        st.step, st.epoch, st.batch_in_epoch = saved["step"], saved["epoch"], saved["batch_in_epoch"]
        horizon = {**st.horizon, **saved.get("horizon", {})}
        st.horizon_steps, st.horizon_fixed, st.warm_end = horizon["steps"], horizon["fixed"], horizon.get("warm_end")
        st.trained_before, st.tokens_seen = saved["train_time"], saved["tokens_seen"]
        st.best_val = saved.get("best_val")
        st.val_seconds = saved.get("val_time", 0.0)
        rng = saved["rng"]
        torch.set_rng_state(rng["torch"][dist.rank] if dist.rank < len(rng["torch"]) else rng["torch"][0])
        if device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state(rng["cuda"][min(dist.rank, len(rng["cuda"]) - 1)], device)
        if dist.main:
            truncate_metrics(self.files.metrics, st.step)
            self.echo(f"resuming {run} from step {st.step:,} ({ck.name})")

    def _start(self) -> None:
        """A new run: per-rank RNG streams, and rank 0 writes the run folder's config and run.json."""
        torch.manual_seed(self.tcfg.seed + 1000 * self.dist.rank)  # dropout/hash draws differ per rank
        if self.dist.main:
            self.files.root.mkdir(parents=True, exist_ok=True)
            write_config(self.files.config, self.config.to_dict())
            atomic_write_json(self.files.run, {"fasta": [str(Path(p).resolve()) for p in self.fasta],
                                               "world_size": self.dist.world})
            self.files.metrics.unlink(missing_ok=True)

    # ------------------------------------------------------------------ pieces of the loop
    def train_time(self) -> float:
        """Seconds of training, earlier invocations included."""
        return self.state.trained_before + (time.perf_counter() - self.t_loop)

    def batches(self) -> Iterator[dict]:
        """Training batches forever, epoch after epoch; after a resume, from the saved position."""
        st = self.state
        while True:
            set_epoch(self.train_loader, st.epoch)
            it = iter(self.train_loader)
            for _ in range(st.batch_in_epoch):  # resume mid-epoch: same order, skip what was used
                next(it)
            for b in it:
                st.batch_in_epoch += 1
                yield b
            st.epoch, st.batch_in_epoch = st.epoch + 1, 0

    def log(self, row: dict) -> None:
        if self.dist.main:
            append_metrics(self.files.metrics, row)

    def validate(self, final: bool = False) -> Optional[float]:
        """Bits per base on the fixed validation sample (``val_bases`` held-out bases, seeded):
        its first ``eval_batches`` batches during the run, all of it at the end."""
        if self.val_loader is None:
            return None
        t0 = time.perf_counter()
        bpb, n, se = validation_bits(self.model, self.val_loader, self.device, self.tcfg.precision,
                                     0 if final else self.tcfg.eval_batches)
        self.state.window_val += time.perf_counter() - t0
        self.state.val_seconds += time.perf_counter() - t0
        self.state.last_stderr = se
        self.log({"kind": "val", "step": self.state.step, "bits_per_base": bpb, "stderr": se, "targets": n,
                  "windows": len(self.val_sample), "final": final, "seconds": time.perf_counter() - t0,
                  "time": self.train_time()})
        return bpb

    def save(self, val: Optional[float]) -> Path:
        """A checkpoint of this step (rank 0; every rank's RNG state gathered to it), the pointers
        to it, and the pruning of old ones. Returns its folder (the run folder on other ranks)."""
        st, dist, device = self.state, self.dist, self.device
        rng_t = [torch.get_rng_state()]
        rng_c = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
        if dist.world > 1:  # every rank's RNG state, gathered to rank 0
            rng_t = dist.gather(rng_t[0])
            if rng_c:
                rng_c = dist.gather(rng_c[0])
        if not dist.main:
            return self.files.root
        is_best = val is not None and (st.best_val is None or val < st.best_val)
        if is_best:
            st.best_val = val
        training_state = {
            "step": st.step, "epoch": st.epoch, "batch_in_epoch": st.batch_in_epoch,
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(), "horizon": st.horizon, "rng": {"torch": rng_t, "cuda": rng_c},
            "train_time": self.train_time(), "best_val": st.best_val, "tokens_seen": st.tokens_seen,
            "val_time": st.val_seconds}
        meta = {"step": st.step, "objective": self.tcfg.objective, "val_bits_per_base": val,
                "train_data": self.meta_data, "tokens_seen": st.tokens_seen}
        folder = save_checkpoint(self.model, self.config.model, self.tokenizer.spec(), self.files.checkpoint(st.step),
                                 training_state=training_state, meta=meta)
        point_to_checkpoint(self.files.root, folder, st.step, is_best, val_bits_per_base=val)
        prune_checkpoints(self.files.root, self.tcfg.keep_last)
        return folder

    def optimizer_step(self, data: Iterator[dict]) -> float:
        """One optimizer step over ``grad_accum`` micro-batches, gradients averaged over the ranks;
        returns the step's training bits per target base (all ranks)."""
        tcfg, st, dist = self.tcfg, self.state, self.dist
        self.opt.zero_grad(set_to_none=True)
        loss_sum, n_sum = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for _ in range(tcfg.grad_accum):
            loss, n, mask = batch_loss(self.model, next(data), self.device, tcfg.precision)
            self.scaler.scale(loss / max(n, 1) / tcfg.grad_accum).backward()
            loss_sum, n_sum, seen = loss_sum + loss.detach().double(), n_sum + n, int(mask.sum()) * dist.world
            st.tokens_seen, st.window_tokens = st.tokens_seen + seen, st.window_tokens + seen
        dist.average_gradients(self.model)
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        st.step += 1
        # one all-reduce (the step's one host sync) for the loss and the clock (every rank must take the same lr)
        packed = torch.cat([loss_sum.view(1), dist.tensor([n_sum, self._time_fraction()])])
        stats = dist.all_reduce_(packed, False).tolist()
        st.time_fraction = stats[2] / dist.world
        self.sched.step()
        return float(stats[0] / max(float(stats[1]), 1.0)) / LN2

    def _time_fraction(self) -> float:
        """Under a time budget, the share of it used by the end of the next step (0 without one, and
        during warmup); see :func:`.optim.time_progress`."""
        st, tcfg = self.state, self.tcfg
        now = self.train_time()
        last = now - st.last_clock if st.last_clock is not None else 0.0
        st.last_clock = now
        if tcfg.max_time is None:
            return 0.0
        if st.warm_end is None and st.step >= tcfg.warmup_steps:
            st.warm_end = now
        return 0.0 if st.warm_end is None else time_progress(now, last, st.warm_end, tcfg.max_time)

    def record(self, bpb: float) -> None:
        """The step's loss in the history, ``on_step``, a metrics row every ``log_every`` steps, the bar."""
        st = self.state
        st.history.append({"step": st.step, "bits_per_base": bpb})
        if self.on_step is not None:
            self.on_step(st.step, bpb)
        if st.step % self.tcfg.log_every == 0 or st.step == 1:
            now = time.perf_counter()
            tps = st.window_tokens / max(now - st.window_start - st.window_val, 1e-9)  # validation left out
            self.log({"kind": "train", "step": st.step, "loss": bpb * LN2, "bits_per_base": bpb,
                      "lr": self.sched.get_last_lr()[0], "tokens_per_s": tps, "time": self.train_time()})
            st.window_tokens, st.window_start, st.window_val = 0, now, 0.0
            self.bar.set_postfix(bpb=f"{bpb:.3f}", tok_s=f"{tps:,.0f}",
                                 val="-" if st.last_val is None else f"{st.last_val:.3f}")
        self.bar.update(1)

    def validate_and_save_when_due(self) -> None:
        st = self.state
        if st.step % self.tcfg.eval_every == 0:
            st.last_val, st.val_step = self.validate(), st.step
            if self.tcfg.max_time is not None:  # the bar's estimate of the steps that fit, from the recent speed
                self.bar.total = fit_horizon(st.step, self.train_time(), st.probe, self.tcfg, self.dist)
                st.probe = (st.step, self.train_time())
            if self.dist.main:
                plot_loss_curve(self.files.metrics, self.files.plot)
        if st.step % self.tcfg.save_every == 0:
            st.last_checkpoint = self.save(st.last_val if st.val_step == st.step else None)

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        st, tcfg, dist = self.state, self.tcfg, self.dist
        self.t_loop = time.perf_counter()
        self.model.train()
        data = self.batches()
        st.probe = (st.step, self.train_time())
        self.bar = tqdm(total=st.horizon_steps, initial=st.step, disable=not (self.progress and dist.main),
                        unit="step", dynamic_ncols=True, desc="pretrain")
        st.window_start = time.perf_counter()
        # With process-wide tuning on (runtime.tuning; the CLI's default), everything built so far
        # (modules, torch, Biopython) leaves the cyclic GC's generations for the run: their full
        # passes otherwise walk it during the steps (~3-4% of a 64K-token step's CPU time).
        with runtime.frozen_gc(), StopFlag() as stop:
            while st.step < tcfg.max_steps:
                if tcfg.max_time is not None and dist.agree(self.train_time() >= tcfg.max_time):
                    st.stopped_by = "max_time"
                    break
                self.record(self.optimizer_step(data))
                self.validate_and_save_when_due()
                if dist.agree(stop.signum is not None):
                    st.stopped_by = "signal"
                    break
            self.bar.close()
            # the final model is validated on the whole held-out split and saved
            st.last_val, st.val_step = self.validate(final=True), st.step
            st.last_checkpoint = self.save(st.last_val)
            if dist.main and self.files.metrics.is_file():
                plot_loss_curve(self.files.metrics, self.files.plot)
            signum = stop.signum
        kernels.release_buffers()  # the attention kernel's kept work buffers
        dist.check_same_parameters(self.model)  # ranks must hold one model
        return self.result(signum)

    def result(self, signum: Optional[int]) -> TrainResult:
        """The run's :class:`TrainResult`; rank 0 also writes it to ``result.json`` (less the history)."""
        st = self.state
        result = TrainResult(run_dir=self.files.root, step=st.step, wall_time=time.perf_counter() - self.t_start,
                             train_time=self.train_time(), val_bits_per_base=st.last_val,
                             best_val_bits_per_base=st.best_val, checkpoint=st.last_checkpoint,
                             stopped_by=st.stopped_by,
                             tokens_per_second=st.tokens_seen / max(self.train_time() - st.val_seconds, 1e-9),
                             history=st.history, signal=signum, is_main=self.dist.main, val_stderr=st.last_stderr,
                             val_windows=len(self.val_sample))
        if self.dist.main:
            atomic_write_json(self.files.result, {k: (str(v) if isinstance(v, Path) else v)
                                                  for k, v in result.__dict__.items() if k != "history"})
        return result


# ---------------------------------------------------------------------- the entry point
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
    files = RunFiles(Path(out_dir))
    fasta, config = run_inputs(fasta, config, files, resume)
    tokenizer = make_tokenizer(config.data.alphabet)
    config.model.vocab_size = tokenizer.vocab_size
    _check_config(config)

    device = resolve_device(config.train.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    dist = Dist(device)
    try:
        result = Trainer(fasta, config, files, resume, device, dist, tokenizer, progress, echo, t_start,
                         on_step).run()
    except BaseException:
        dist.close()  # no barrier: the other ranks may never get there
        raise
    dist.close(finished=True)
    return result


def _check_config(config: RunConfig) -> None:
    """ConfigError for a window longer than the model takes, or an objective the model's attention
    direction does not fit."""
    mcfg, dcfg, tcfg = config.model, config.data, config.train
    if dcfg.seq_len > mcfg.max_seq_len:
        raise ConfigError(f"data.seq_len {dcfg.seq_len:,} exceeds model.max_seq_len {mcfg.max_seq_len:,}; lower "
                          f"--seq-len or use a config with a longer max_seq_len (configs/long.yaml)")
    if tcfg.objective == "masked" and mcfg.causal:
        raise ConfigError("train.objective 'masked' needs a bidirectional model: set model.causal: false")
    if tcfg.objective == "causal" and not mcfg.causal:
        raise ConfigError("train.objective 'causal' needs model.causal: true (next-base prediction must not see "
                          "the future)")
    mcfg.validate()
