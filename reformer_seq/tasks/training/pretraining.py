"""Pretraining: a ReformerLM on genome windows, as a task of the shared :class:`~.trainer.Trainer`.

AdamW with linear warmup and cosine decay (:mod:`.optim`), gradient clipping and accumulation,
optional bf16 autocast (CPU and GPU) or fp16 with a gradient scaler (GPU). Every ``eval_every``
steps the model is scored on a fixed, seeded sample (``val_bases``) of the held-out windows of
each record, all of the sample at the end (:mod:`.loss`: bits per base for the causal objective,
bits per masked base for the masked one, with a standard error). With ``max_time`` the
learning-rate schedule follows the clock (:mod:`.optim`). Metrics go to ``metrics.jsonl``
and a loss-curve PNG in the run folder (:mod:`.run_folder`).

Checkpoints (see :mod:`reformer_seq.runtime.checkpoint`) carry the optimizer, scheduler, step,
RNG state and data position (:class:`~.trainer.TrainState`), so ``resume=True`` continues
exactly: the losses after resuming equal those of an uninterrupted run. SIGINT/SIGTERM finish
the current step, save a checkpoint and stop (:mod:`.stop`).

Multi-process: under ``torchrun`` each rank trains on its own shard of the windows and the
gradients are averaged with one all-reduce per step (:mod:`.distributed`). Only rank 0 writes files.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ...config import RunConfig
from ...errors import ConfigError, InputError
from ...genome.batches import make_collator, make_dataloader, set_epoch
from ...genome.encoded import file_sha256
from ...genome.tokenizers import make_tokenizer
from ...genome.windows import datasets_from_config
from ...model.lm import ReformerLM
from ...runtime.checkpoint import save_checkpoint
from ...runtime.device import resolve_device
from ...runtime.files import atomic_write_json
from .distributed import Dist
from .loss import LN2, batch_loss, val_sample, validation_bits
from .optim import lr_at, make_optimizer
from .run_folder import RunFiles, run_inputs, write_config
from .trainer import Trainer, TrainState


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


class PretrainTask:
    """The language model, its windows and its bits per base (the :class:`~.trainer.Task` of pretraining)."""

    name, value_key, plot_keys = "pretrain", "bits_per_base", ("bits_per_base", "bits_per_base")
    patience: Optional[int] = None
    final_pass = True  # during the run only eval_batches of the sample are scored; at the end all of it

    def __init__(self, fasta: list[Path], config: RunConfig, files: RunFiles, device: torch.device, dist: Dist,
                 tokenizer, echo: Callable[[str], None]):
        self.fasta, self.config, self.files, self.device, self.dist = fasta, config, files, device, dist
        self.tokenizer, self.echo = tokenizer, echo
        self.tcfg = tcfg = config.train
        self.last_stderr: Optional[float] = None
        self._make_data()
        torch.manual_seed(tcfg.seed)
        self.model = ReformerLM(config.model).to(device)
        dcfg = config.data
        self.meta_data = {"paths": [str(Path(p).resolve()) for p in fasta],
                          "sha256": [file_sha256(p) for p in fasta] if dist.main else [],
                          "alphabet": dcfg.alphabet, "seq_len": dcfg.seq_len, "stride": dcfg.stride,
                          "val_fraction": dcfg.val_fraction, "max_n_fraction": dcfg.max_n_fraction,
                          "train_windows": len(self.train_ds), "val_windows": len(self.val_ds),
                          "val_sample_windows": len(self.val_sample)}

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

    # ------------------------------------------------------------------ the Task
    def optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.model, self.tcfg.lr, self.tcfg.weight_decay, self.tcfg.betas)

    def lr_factor(self, step: int, state: TrainState) -> float:
        t = self.tcfg
        return lr_at(step, 1.0, t.warmup_steps, state.horizon_steps, t.min_lr_ratio, state.time_fraction)

    def epoch(self, epoch: int):
        set_epoch(self.train_loader, epoch)
        return self.train_loader

    def loss(self, batch: dict) -> tuple[torch.Tensor, int, int]:
        loss, n, mask = batch_loss(self.model, batch, self.device, self.tcfg.precision)
        return loss, n, int(mask.sum())

    def before_clip(self, step: int) -> None:
        pass

    def train_fields(self, loss: float) -> tuple[float, dict]:
        bpb = loss / LN2
        return bpb, {"loss": bpb * LN2, "bits_per_base": bpb}

    def train_mode(self) -> None:
        self.model.train()

    def validate(self, final: bool) -> Optional[tuple[float, dict]]:
        """Bits per base on the fixed validation sample (``val_bases`` held-out bases, seeded):
        its first ``eval_batches`` batches during the run, all of it at the end."""
        if self.val_loader is None:
            return None
        bpb, n, se = validation_bits(self.model, self.val_loader, self.device, self.tcfg.precision,
                                     0 if final else self.tcfg.eval_batches)
        self.last_stderr = se
        return bpb, {"bits_per_base": bpb, "stderr": se, "targets": n, "windows": len(self.val_sample), "final": final}

    def improves(self, value: float, best: Optional[float]) -> bool:
        return best is None or value < best

    def scores(self, value: Optional[float]) -> dict:
        return {"val_bits_per_base": value}

    def save(self, folder: Path, training_state: dict, value: Optional[float], state: TrainState) -> Path:
        meta = {"step": state.step, "objective": self.tcfg.objective, "val_bits_per_base": value,
                "train_data": self.meta_data, "tokens_seen": state.tokens_seen}
        return save_checkpoint(self.model, self.config.model, self.tokenizer.spec(), folder,
                               training_state=training_state, meta=meta)

    def start(self, rank: int, main: bool) -> None:
        """Per-rank RNG streams; rank 0 writes the run folder's config and run.json."""
        torch.manual_seed(self.tcfg.seed + 1000 * rank)  # dropout/hash draws differ per rank
        if main:
            write_config(self.files.config, self.config.to_dict())
            atomic_write_json(self.files.run, {"fasta": [str(Path(p).resolve()) for p in self.fasta],
                                               "world_size": self.dist.world})

    def postfix(self, value: float, tokens_per_s: float, state: TrainState) -> dict:
        return {"bpb": f"{value:.3f}", "tok_s": f"{tokens_per_s:,.0f}",
                "val": "-" if state.last_val is None else f"{state.last_val:.3f}"}

    def result(self, trainer: Trainer, signum: Optional[int], t_start: float) -> TrainResult:
        """The run's :class:`TrainResult`; rank 0 also writes it to ``result.json`` (less the history)."""
        st, train_time = trainer.state, trainer.train_time()
        result = TrainResult(run_dir=self.files.root, step=st.step, wall_time=time.perf_counter() - t_start,
                             train_time=train_time, val_bits_per_base=st.last_val,
                             best_val_bits_per_base=st.best_val, checkpoint=st.last_checkpoint,
                             stopped_by=st.stopped_by,
                             tokens_per_second=st.tokens_seen / max(train_time - st.val_seconds, 1e-9),
                             history=st.history, signal=signum, is_main=self.dist.main, val_stderr=self.last_stderr,
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
        task = PretrainTask(fasta, config, files, device, dist, tokenizer, echo)
        trainer = Trainer(task, files, resume, device, dist, progress, echo, on_step)
        result = task.result(trainer, trainer.run(), t_start)
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
