"""The training loop shared by pretraining and fine-tuning: steps, validation, checkpoints, exact
resume, stopping on a signal, and multi-process gradient averaging.

What is trained, on what, and how it is scored is a *task* (:class:`Task`): pretraining's is
:class:`~reformer_seq.tasks.training.pretraining.PretrainTask` (a ReformerLM on genome windows,
bits per base), fine-tuning's :class:`~reformer_seq.tasks.finetune.train.FinetuneTask` (a
sequence-level head, AUROC/accuracy/Pearson r/MSE). The :class:`Trainer` owns everything else:

- one optimizer step per iteration over ``grad_accum`` micro-batches (the task's summed loss
  over its targets), gradient clipping, optional fp16 gradient scaling, the learning rate
  ``lr * task.lr_factor(step, state)`` (:mod:`.optim`);
- every ``eval_every`` steps a validation (``task.validate``) and, at most once a minute and at
  the end, the loss curve (:func:`.run_folder.plot_loss_curve`); every ``save_every`` steps a
  checkpoint (the task writes the weights; the trainer adds the optimizer, scheduler, step,
  data position and RNG states: :class:`TrainState`), ``latest.json``/``best.json`` and the
  pruning of old ones; with ``task.patience`` the run stops after that many checkpoints whose
  validation did not improve;
- ``max_steps``, ``max_time`` (seconds of training, resumed runs included) and SIGINT/SIGTERM
  (finish the step, validate, checkpoint, stop: :mod:`.stop`) end a run; the end of a run
  validates and checkpoints once more (``task.final_pass``: also right after a checkpoint);
- ``resume=True`` restores all of that, so a run stopped after k steps and resumed gives the
  same losses and weights as an uninterrupted one;
- under ``torchrun`` the gradients are averaged over the ranks with one all-reduce per step
  (:mod:`.distributed`); only rank 0 writes files.

Rows of ``metrics.jsonl`` (:mod:`.run_folder`): ``{"kind": "train", "step", <the task's
training figures>, "lr", "tokens_per_s", "time"}`` every ``log_every`` steps and ``{"kind":
"val", "step", <the task's validation figures>, "seconds", "time"}`` per validation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol

import torch

from ...config import TrainConfig
from ...errors import CheckpointError
from ...model.attention import kernel as kernels
from ...runtime import tuning as runtime
from ...runtime.checkpoint import STATE_FILE, load_model_weights, resolve_checkpoint
from .distributed import Dist
from .optim import fit_horizon, time_progress
from .run_folder import RunFiles, append_metrics, plot_loss_curve, point_to_checkpoint, prune_checkpoints, \
    truncate_metrics
from .stop import StopFlag


PLOT_INTERVAL = 60.0  # seconds: the loss curve is redrawn at a validation at most this often (and at the end)


@dataclass
class TrainState:
    """What the loop carries from step to step. The first fields are saved in every checkpoint
    and restored on resume; the rest belong to this invocation."""

    horizon_steps: int  # the cosine schedule's length in steps (max_steps)
    horizon_fixed: bool  # kept for checkpoints of earlier versions (their time budgets fitted it once)
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already used
    tokens_seen: int = 0  # real (unpadded) tokens, all ranks
    trained_before: float = 0.0  # seconds of training in earlier invocations
    best_val: Optional[float] = None
    best_step: Optional[int] = None  # the step of best_val
    bad_evals: int = 0  # checkpoints since the last one whose validation improved on best_val
    warm_end: Optional[float] = None  # training time when warmup ended (time budgets: the schedule's start)
    val_seconds: float = 0.0  # seconds spent validating, earlier invocations included (left out of tokens/s)
    # this invocation only
    history: list[dict] = field(default_factory=list)  # {"step", task.value_key} per step
    last_val: Optional[float] = None  # the last validation's value, at val_step
    val_step: int = -1
    saved_step: int = -1  # the step of the last checkpoint
    last_checkpoint: Optional[Path] = None
    stopped_by: str = "max_steps"  # max_steps | max_time | early_stop | signal
    probe: tuple[int, float] = (0, 0.0)  # (step, train time) the progress bar's step estimate is measured from
    window_tokens: int = 0  # tokens since the last train row (for its tokens_per_s)
    window_start: float = 0.0
    window_val: float = 0.0  # seconds of validation since the last train row (left out of tokens_per_s)
    time_fraction: float = 0.0  # time budgets: share of the budget used by the end of the next step
    last_clock: Optional[float] = None  # training time at the last optimizer step's end

    @property
    def horizon(self) -> dict:
        return {"steps": self.horizon_steps, "fixed": self.horizon_fixed, "warm_end": self.warm_end}


class Task(Protocol):
    """What a :class:`Trainer` trains: the model, its data, its loss and its validation.

    ``tcfg`` supplies the loop's settings (max_steps, max_time, eval_every, save_every,
    log_every, keep_last, grad_accum, grad_clip, warmup_steps, precision); ``patience``
    (None: never) stops the run after that many checkpoints without a better validation;
    ``final_pass`` validates and checkpoints at the end even when the last step has just been
    (pretraining: its end-of-run validation scores the whole sample); ``value_key`` names the
    per-step training figure (the history's key, ``on_step``'s value); ``name`` labels the bar;
    ``plot_keys`` are the train and val rows' figures the loss curve shows."""

    @property
    def name(self) -> str: ...
    @property
    def model(self) -> torch.nn.Module: ...
    @property
    def tcfg(self) -> TrainConfig: ...
    @property
    def patience(self) -> Optional[int]: ...
    @property
    def final_pass(self) -> bool: ...
    @property
    def value_key(self) -> str: ...
    @property
    def plot_keys(self) -> tuple[str, str]: ...  # the metrics rows' keys plotted: (train row, val row)

    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer (its param groups' ``lr`` are the base rates, scaled by ``lr_factor``)."""

    def lr_factor(self, step: int, state: TrainState) -> float:
        """The learning rate at ``step`` as a multiple of the base rates."""

    def epoch(self, epoch: int) -> Iterable[Any]:
        """The micro-batches of ``epoch``, in a fixed order (a function of the epoch and the seed)."""

    def loss(self, batch: Any) -> tuple[torch.Tensor, int, int]:
        """(loss summed over its targets, the number of targets, the batch's real tokens); a loss
        that is already a mean comes with 1 target."""

    def before_clip(self, step: int) -> None:
        """Called after the backward pass of step ``step`` (0-based), before clipping (e.g. to drop gradients)."""

    def train_fields(self, loss: float) -> tuple[float, dict]:
        """From a step's loss per target: (the step's training figure, its fields in a train row)."""

    def train_mode(self) -> None:
        """Put the model in training mode (at the start and after every validation)."""

    def validate(self, final: bool) -> Optional[tuple[float, dict]]:
        """(the validation value, its fields in a val row), or None without validation data."""

    def improves(self, value: float, best: Optional[float]) -> bool:
        """Whether ``value`` is better than ``best`` (None: nothing yet)."""

    def scores(self, value: Optional[float]) -> dict:
        """The validation value as ``latest.json``/``best.json`` fields (e.g. ``val_bits_per_base``)."""

    def save(self, folder: Path, training_state: dict, value: Optional[float], state: TrainState) -> Path:
        """Write the checkpoint folder (weights, config, ``training_state``); returns it."""

    def start(self, rank: int, main: bool) -> None:
        """A new run: seed the RNG streams as the task wants; rank 0 writes the run's settings."""

    def postfix(self, value: float, tokens_per_s: float, state: TrainState) -> dict:
        """The progress bar's figures."""


class Trainer:
    """One run of ``task`` on one rank: the optimizer, the run folder and the loop; :meth:`run`
    trains until ``max_steps``, ``max_time``, early stopping or a signal."""

    def __init__(self, task: Task, files: RunFiles, resume: bool, device: torch.device, dist: Dist,
                 progress: bool, echo: Callable[[str], None], on_step: Optional[Callable[[int, float], None]]):
        self.task, self.files, self.device, self.dist = task, files, device, dist
        self.progress, self.echo, self.on_step = progress, echo, on_step
        self.tcfg = tcfg = task.tcfg
        self.model = task.model
        self.t_loop = self.last_plot = 0.0  # perf_counter at the loop's start, at the last loss-curve drawing
        dist.broadcast_parameters(self.model)
        self.opt = task.optimizer()
        # The cosine schedule ends at max_steps or, with a time budget, when the clock says so
        # (optim.time_progress: re-measured at every step, so a run that slows down still anneals).
        self.state = state = TrainState(horizon_steps=tcfg.max_steps, horizon_fixed=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(  # a lambda: LambdaLR saves no state for it
            self.opt, lambda s: task.lr_factor(s, state))
        self.scaler = torch.amp.GradScaler("cuda", enabled=(tcfg.precision == "fp16"))
        if resume:
            self._restore()
        else:
            self._start()

    # ------------------------------------------------------------------ setting up
    def _restore(self) -> None:
        """Continue from the run's latest checkpoint: weights, optimizer, schedule, data position, RNG."""
        st, dist, device, run = self.state, self.dist, self.device, self.files.root
        ck = resolve_checkpoint(run, prefer="latest")
        saved = torch.load(ck / STATE_FILE, map_location="cpu", weights_only=True)
        if "epoch" not in saved:
            raise CheckpointError(f"{ck}: written by an earlier version's fine-tuning loop, which cannot be resumed "
                                  f"exactly; start a new run (its weights still load for predict and embed)")
        load_model_weights(self.model, ck, map_location=str(device))
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        if "scaler" in saved:
            self.scaler.load_state_dict(saved["scaler"])
        st.step, st.epoch, st.batch_in_epoch = saved["step"], saved["epoch"], saved["batch_in_epoch"]
        horizon = {**st.horizon, **saved.get("horizon", {})}
        st.horizon_steps, st.horizon_fixed, st.warm_end = horizon["steps"], horizon["fixed"], horizon.get("warm_end")
        st.trained_before, st.tokens_seen = saved["train_time"], saved["tokens_seen"]
        st.best_val, st.best_step = saved.get("best_val"), saved.get("best_step")
        st.bad_evals = saved.get("bad_evals", 0)
        st.val_seconds = saved.get("val_time", 0.0)
        rng = saved["rng"]
        torch.set_rng_state(rng["torch"][dist.rank] if dist.rank < len(rng["torch"]) else rng["torch"][0])
        if device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state(rng["cuda"][min(dist.rank, len(rng["cuda"]) - 1)], device)
        if dist.main:
            truncate_metrics(self.files.metrics, st.step)
            self.echo(f"resuming {run} from step {st.step:,} ({ck.name})")

    def _start(self) -> None:
        """A new run: the task seeds its RNG streams and writes its settings; an old metrics log goes."""
        if self.dist.main:
            self.files.root.mkdir(parents=True, exist_ok=True)
        self.task.start(self.dist.rank, self.dist.main)
        if self.dist.main:
            self.files.metrics.unlink(missing_ok=True)

    # ------------------------------------------------------------------ pieces of the loop
    def train_time(self) -> float:
        """Seconds of training, earlier invocations included."""
        return self.state.trained_before + (time.perf_counter() - self.t_loop)

    def batches(self) -> Iterator[Any]:
        """Training batches forever, epoch after epoch; after a resume, from the saved position."""
        st = self.state
        while True:
            it = iter(self.task.epoch(st.epoch))
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
        """The task's validation (during the run, or the end-of-run one), logged; None without
        validation data."""
        t0 = time.perf_counter()
        out = self.task.validate(final)
        self.task.train_mode()
        if out is None:
            return None
        value, fields = out
        self.state.window_val += time.perf_counter() - t0
        self.state.val_seconds += time.perf_counter() - t0
        self.log({"kind": "val", "step": self.state.step, **fields, "seconds": time.perf_counter() - t0,
                  "time": self.train_time()})
        return value

    def judge(self, val: Optional[float]) -> bool:
        """Whether ``val`` is the best so far (then it becomes ``best_val``); counts the checkpoints
        without improvement (``bad_evals``)."""
        st = self.state
        if val is None:
            return False
        if self.task.improves(val, st.best_val):
            st.best_val, st.best_step, st.bad_evals = val, st.step, 0
            return True
        st.bad_evals += 1
        return False

    def save(self, val: Optional[float]) -> Path:
        """A checkpoint of this step (rank 0; every rank's RNG state gathered to it), the pointers
        to it, and the pruning of old ones. Returns its folder (the run folder on other ranks)."""
        st, dist, device = self.state, self.dist, self.device
        st.saved_step = st.step
        rng_t = [torch.get_rng_state()]
        rng_c = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
        if dist.world > 1:  # every rank's RNG state, gathered to rank 0
            rng_t = dist.gather(rng_t[0])
            if rng_c:
                rng_c = dist.gather(rng_c[0])
        is_best = self.judge(val)  # on every rank (they validate the same sample), so all stop early together
        if not dist.main:
            return self.files.root
        training_state = {
            "step": st.step, "epoch": st.epoch, "batch_in_epoch": st.batch_in_epoch,
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(), "horizon": st.horizon, "rng": {"torch": rng_t, "cuda": rng_c},
            "train_time": self.train_time(), "best_val": st.best_val, "best_step": st.best_step,
            "bad_evals": st.bad_evals, "tokens_seen": st.tokens_seen, "val_time": st.val_seconds}
        folder = self.task.save(self.files.checkpoint(st.step), training_state, val, st)
        point_to_checkpoint(self.files.root, folder, st.step, is_best, **self.task.scores(val))
        prune_checkpoints(self.files.root, self.tcfg.keep_last)
        return folder

    def optimizer_step(self, data: Iterator[Any]) -> float:
        """One optimizer step over ``grad_accum`` micro-batches, gradients averaged over the ranks;
        returns the step's training loss per target (all ranks)."""
        tcfg, st, dist = self.tcfg, self.state, self.dist
        self.opt.zero_grad(set_to_none=True)
        loss_sum, n_sum = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for _ in range(tcfg.grad_accum):
            loss, n, tokens = self.task.loss(next(data))
            self.scaler.scale(loss / max(n, 1) / tcfg.grad_accum).backward()
            loss_sum, n_sum, seen = loss_sum + loss.detach().double(), n_sum + n, tokens * dist.world
            st.tokens_seen, st.window_tokens = st.tokens_seen + seen, st.window_tokens + seen
        dist.average_gradients(self.model)
        self.scaler.unscale_(self.opt)
        self.task.before_clip(st.step)
        # parameters that train only: the reversible stack's backward also fills frozen ones' .grad
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], tcfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        st.step += 1
        # one all-reduce (the step's one host sync) for the loss and the clock (every rank must take the same lr)
        packed = torch.cat([loss_sum.view(1), dist.tensor([n_sum, self._time_fraction()])])
        stats = dist.all_reduce_(packed, False).tolist()
        st.time_fraction = stats[2] / dist.world
        self.sched.step()
        return float(stats[0] / max(float(stats[1]), 1.0))

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

    def record(self, loss: float) -> None:
        """The step's figure in the history, ``on_step``, a metrics row every ``log_every`` steps, the bar."""
        st = self.state
        value, fields = self.task.train_fields(loss)
        st.history.append({"step": st.step, self.task.value_key: value})
        if self.on_step is not None:
            self.on_step(st.step, value)
        if st.step % self.tcfg.log_every == 0 or st.step == 1:
            now = time.perf_counter()
            tps = st.window_tokens / max(now - st.window_start - st.window_val, 1e-9)  # validation left out
            self.log({"kind": "train", "step": st.step, **fields, "lr": self.sched.get_last_lr()[0],
                      "tokens_per_s": tps, "time": self.train_time()})
            st.window_tokens, st.window_start, st.window_val = 0, now, 0.0
            self.bar.set_postfix(self.task.postfix(value, tps, st))
        self.bar.update(1)

    def validate_and_save_when_due(self) -> None:
        st = self.state
        if st.step % self.tcfg.eval_every == 0:
            st.last_val, st.val_step = self.validate(), st.step
            if self.tcfg.max_time is not None:  # the bar's estimate of the steps that fit, from the recent speed
                self.bar.total = fit_horizon(st.step, self.train_time(), st.probe, self.tcfg, self.dist)
                st.probe = (st.step, self.train_time())
            self.plot()
        if st.step % self.tcfg.save_every == 0:
            st.last_checkpoint = self.save(st.last_val if st.val_step == st.step else None)

    def plot(self, final: bool = False) -> None:
        """Redraw the loss curve (rank 0): at the end, and at a validation when the last drawing is
        ``PLOT_INTERVAL`` seconds old (a drawing costs ~0.2-0.6 s: at every validation of a short
        fine-tune it would eat a tenth of a time budget)."""
        now = time.perf_counter()
        if not (final or now - self.last_plot >= PLOT_INTERVAL) or not self.dist.main:
            return
        if self.files.metrics.is_file():
            plot_loss_curve(self.files.metrics, self.files.plot, *self.task.plot_keys)
        self.last_plot = now

    def patience_used_up(self) -> bool:
        """Early stopping: ``patience`` checkpoints in a row, the last at this step, without a better validation."""
        p, st = self.task.patience, self.state
        return p is not None and st.saved_step == st.step and st.bad_evals >= p

    # ------------------------------------------------------------------ the loop
    def run(self) -> Optional[int]:
        """Train; returns the signal that stopped the run (None when something else did)."""
        from tqdm.auto import tqdm

        st, tcfg, dist = self.state, self.tcfg, self.dist
        self.t_loop = self.last_plot = time.perf_counter()
        self.task.train_mode()
        data = self.batches()
        st.probe = (st.step, self.train_time())
        self.bar = tqdm(total=st.horizon_steps, initial=st.step, disable=not (self.progress and dist.main),
                        unit="step", dynamic_ncols=True, desc=self.task.name)
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
                if self.patience_used_up():
                    st.stopped_by = "early_stop"
                    break
                if dist.agree(stop.signum is not None):
                    st.stopped_by = "signal"
                    break
            self.bar.close()
            # the final model is validated (all of the sample) and saved
            if self.task.final_pass or st.saved_step != st.step:
                st.last_val, st.val_step = self.validate(final=True), st.step
                st.last_checkpoint = self.save(st.last_val)
            self.plot(final=True)
            signum = stop.signum
        kernels.release_buffers()  # the attention kernel's kept work buffers
        dist.check_same_parameters(self.model)  # ranks must hold one model
        return signum
