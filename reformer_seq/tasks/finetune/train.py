"""Fine-tuning: train a :class:`~reformer_seq.tasks.finetune.model.SequenceModel` on labelled
sequences, as a task (:class:`FinetuneTask`) of the loop pretraining uses
(:class:`~reformer_seq.tasks.training.trainer.Trainer`).

AdamW (the pretraining optimizer, :func:`~reformer_seq.tasks.training.optim.make_optimizer`) with a linear
warmup and then a constant learning rate (the backbone's scaled by ``backbone_lr_scale``),
gradient clipping, optional bf16 autocast; ``head_steps`` > 0 trains the head alone first
(linear probing, then fine-tuning). ``freeze``:
``"all"`` trains the head only (the backbone runs in eval mode and its parameters never change),
``"none"`` trains everything, an integer N trains the head, the final norm and the top N blocks.

Every ``eval_every`` steps the model is scored on the validation set (AUROC or accuracy for
classification, Pearson r or MSE for regression; :mod:`.metrics`), a checkpoint is written
(``checkpoints/step-*``, ``latest.json``; ``best.json`` points at the best validation score), and
training stops early after ``patience`` evaluations without improvement. The run folder is
pretraining's (:mod:`reformer_seq.tasks.training.run_folder`): ``finetune.json`` (the inputs,
pretrained model, options and head), ``metrics.jsonl``, ``loss_curve.png``, ``result.json``.
The batch of step s is a pure function of s and the seed (epoch e = s // batches-per-epoch is a
seeded permutation), and the checkpoint keeps the optimizer, data position and RNG state, so
``resume=True`` continues exactly: k steps, resume, k more == 2k steps. SIGINT/SIGTERM finish
the step, validate, checkpoint and stop.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ...config import TrainConfig
from ...errors import CheckpointError, ConfigError
from ...genome.labelled import (LabelledSet, check_lengths, class_names, encode_labels, infer_task, read_class_fastas,
                                read_tsv, split_validation)
from ...runtime.checkpoint import resolve_checkpoint
from ...runtime.device import autocast, resolve_device
from ...runtime.files import atomic_write_json
from ..pretrained import load_pretrained
from ..training.distributed import Dist
from ..training.optim import lr_at, make_optimizer
from ..training.run_folder import RunFiles
from ..training.trainer import Trainer, TrainState
from .metrics import (CLASSIFY_METRICS, REGRESS_METRICS, classification_metrics, default_metric, higher_is_better,
                      regression_metrics)
from .model import HeadConfig, SequenceModel, masked_mean, pad_batch, predict_tokens


@dataclass
class FinetuneOptions:
    """Everything that shapes a fine-tuning run (saved in RUN/finetune.json)."""

    task: Optional[str] = None  # classify | regress | None (inferred from the labels)
    pool: str = "attention"  # the defaults are the downstream study's recipe (README)
    hidden: int = 0
    layer: Optional[int] = None
    dropout: float = 0.1
    freeze: Union[str, int] = "none"
    lr: float = 3e-3
    backbone_lr_scale: float = 0.1  # the backbone's learning rate is lr times this
    head_steps: int = 0  # train the head alone for this many steps first (linear probing, then fine-tuning)
    weight_decay: float = 0.01
    warmup_steps: int = 20
    batch_size: int = 32
    max_steps: int = 2000
    max_time: Optional[float] = None
    eval_every: int = 50
    patience: int = 5
    metric: Optional[str] = None
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    grad_clip: float = 1.0


@dataclass
class FinetuneResult:
    run_dir: Path
    step: int
    stopped_by: str  # max_steps | max_time | early_stop | signal
    metric: str
    best_value: Optional[float]
    best_step: Optional[int]
    best_checkpoint: Optional[Path]
    train_time: float
    signal: Optional[int] = None  # the signal that stopped the run, if any

    def line(self) -> str:
        best = "n/a" if self.best_value is None else f"{self.best_value:.4f}"
        return (f"{self.step:,} steps in {self.train_time:.0f} s ({self.stopped_by}); best validation "
                f"{self.metric} {best} at step {self.best_step}; checkpoint {self.best_checkpoint}")


def parse_freeze(value: Union[str, int]) -> Union[str, int]:
    """``all``, ``none`` or a number of top blocks to train."""
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    if value in ("all", "none"):
        return value
    raise ConfigError(f"--freeze must be all, none or a number of top blocks to train, got {value!r}")


def apply_freeze(model: SequenceModel, freeze: Union[str, int]) -> None:
    """Set requires_grad: the head always trains; the backbone per ``freeze``; the LM head never."""
    bb = model.backbone
    depth = len(bb.layers)
    if isinstance(freeze, int) and not 0 <= freeze <= depth:
        raise ConfigError(f"--freeze {freeze}: the backbone has {depth} blocks; use 0..{depth}, all or none")
    for p in bb.parameters():
        p.requires_grad_(freeze == "none")
    if isinstance(freeze, int):
        for blk in list(bb.layers)[depth - freeze:]:
            blk.requires_grad_(True)
        bb.norm.requires_grad_(freeze > 0)
    bb.to_logits.requires_grad_(False)  # unused by the head


# ---------------------------------------------------------------------- inputs
def load_inputs(inputs: dict, tokenizer) -> tuple[LabelledSet, Optional[LabelledSet]]:
    """Training set and optional validation set from ``{"tsv", "fasta", "classes", "val"[, "strict"]}``
    (``strict``: characters outside IUPAC are an error, else N)."""
    strict = bool(inputs.get("strict"))
    if inputs.get("tsv") and inputs.get("classes"):
        raise ConfigError("give the labelled sequences either as a TSV or as --class NAME=FILE, not both")
    if inputs.get("tsv"):
        train = read_tsv(inputs["tsv"], tokenizer, inputs.get("fasta"), strict)
    elif inputs.get("classes"):
        train = read_class_fastas(inputs["classes"], tokenizer, strict)
    else:
        raise ConfigError("no labelled sequences: pass a TSV (sequence or id, label) or --class NAME=FILE twice "
                          "or more")
    val = read_tsv(inputs["val"], tokenizer, inputs.get("fasta"), strict) if inputs.get("val") else None
    return train, val


def head_config(train: LabelledSet, opts: FinetuneOptions) -> HeadConfig:
    task = infer_task(train.labels, opts.task)
    hc = HeadConfig(task=task, pool=opts.pool, hidden=opts.hidden, layer=opts.layer, dropout=opts.dropout)
    if task == "classify":
        hc.classes = class_names(train.labels)
        encode_labels(train, task, hc.classes)  # one-class and label checks
    else:
        y = encode_labels(train, task)
        hc.target_mean, hc.target_std = float(y.mean()), float(y.std()) or 1.0
    metric = opts.metric or default_metric(task, len(hc.classes))
    allowed = CLASSIFY_METRICS if task == "classify" else REGRESS_METRICS
    if metric not in allowed:
        raise ConfigError(f"--metric {metric} does not apply to {task}; use one of {', '.join(allowed)}")
    return hc


@torch.no_grad()
def fit_standardizer(model: SequenceModel, tokens: list[np.ndarray], pad_id: int, device: torch.device,
                     batch_size: int) -> None:
    """Set the head's centre and scale to the mean and std of the training set's pooled features."""
    was = model.training
    model.eval()
    feats = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for s in range(0, len(tokens), batch_size):
            x, mask = pad_batch(tokens[s:s + batch_size], pad_id, device)
            feats.append(masked_mean(model.features(x, mask), mask).float())
    f = torch.cat(feats)  # (N, D)
    model.head.center.copy_(f.mean(0))
    model.head.scale.copy_(f.std(0, unbiased=False).clamp_min(1e-6) if len(f) > 1 else torch.ones_like(f[0]))
    model.train(was)


# ---------------------------------------------------------------------- the task
class FinetuneTask:
    """A :class:`SequenceModel` on labelled sequences, scored by a validation metric (the
    :class:`~reformer_seq.tasks.training.trainer.Task` of fine-tuning)."""

    name, value_key = "finetune", "loss"
    final_pass = False  # every validation scores the whole validation set: none twice at one step

    def __init__(self, model: SequenceModel, tokenizer, train: LabelledSet, y_train: np.ndarray, val: LabelledSet,
                 y_val: np.ndarray, opts: FinetuneOptions, freeze: Union[str, int], files: RunFiles,
                 device: torch.device, meta: dict, settings: dict):
        self.model, self.tok, self.train, self.val = model, tokenizer, train, val
        self.y_train, self.y_val, self.opts, self.freeze, self.files = y_train, y_val, opts, freeze, files
        self.device, self.meta, self.settings = device, meta, settings
        self.hc = model.head_config
        self.metric = opts.metric or default_metric(self.hc.task, len(self.hc.classes))
        self.plot_keys = ("loss", self.metric)
        self.patience = opts.patience
        self.tcfg = TrainConfig(batch_size=opts.batch_size, max_steps=opts.max_steps, max_time=opts.max_time,
                                lr=opts.lr, warmup_steps=opts.warmup_steps, weight_decay=opts.weight_decay,
                                betas=(0.9, 0.999), grad_clip=opts.grad_clip, precision=opts.precision,
                                device=opts.device, seed=opts.seed, eval_every=opts.eval_every,
                                save_every=opts.eval_every, keep_last=1, log_every=10)
        self.n_batches = max(1, len(train) // opts.batch_size)

    def optimizer(self) -> torch.optim.Optimizer:
        """The head's parameters at ``lr``, the backbone's (those that train) at ``lr * backbone_lr_scale``."""
        opts = self.opts
        opt = make_optimizer(self.model.head, opts.lr, opts.weight_decay, (0.9, 0.999))
        backbone = make_optimizer(self.model.backbone, opts.lr * opts.backbone_lr_scale, opts.weight_decay,
                                  (0.9, 0.999))
        for group in backbone.param_groups:
            if group["params"]:
                opt.add_param_group(group)
        return opt

    def lr_factor(self, step: int, state: TrainState) -> float:
        return lr_at(step, 1.0, self.opts.warmup_steps, 1, 1.0)  # warmup, then constant

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        """The batches (indices into the training set) of ``epoch``: a seeded permutation, cut in
        ``batch_size`` pieces (the remainder is left out)."""
        g = torch.Generator().manual_seed(self.opts.seed * 100003 + epoch)
        perm = torch.randperm(len(self.train), generator=g).numpy()
        bs = self.opts.batch_size
        return (perm[b * bs:(b + 1) * bs] for b in range(self.n_batches))

    def loss(self, idx: np.ndarray) -> tuple[torch.Tensor, int, int]:
        """The batch's mean loss (cross-entropy, or the MSE of the standardized target), 1 target, its bases."""
        x, mask = pad_batch([self.train.tokens[i] for i in idx], self.tok.pad_id, self.device)
        y = torch.from_numpy(self.y_train[idx]).to(self.device)
        with autocast(self.device, self.opts.precision):
            raw = self.model(x, mask)
        if self.hc.task == "classify":
            loss = F.cross_entropy(raw.float(), y)
        else:
            loss = F.mse_loss(raw.float().squeeze(-1), (y - self.hc.target_mean) / self.hc.target_std)
        return loss, 1, sum(len(self.train.tokens[i]) for i in idx)  # counted on the host: no device sync

    def before_clip(self, step: int) -> None:
        if step < self.opts.head_steps:  # head first: the backbone's gradients are dropped
            for p in self.model.backbone.parameters():
                p.grad = None

    def train_fields(self, loss: float) -> tuple[float, dict]:
        return loss, {"loss": loss}

    def train_mode(self) -> None:
        self.model.train()
        if self.freeze == "all":
            self.model.backbone.eval()  # no dropout, fixed hashing: the frozen backbone is a fixed function

    def validate(self, final: bool) -> tuple[float, dict]:
        pred = predict_tokens(self.model, self.val.tokens, self.tok.pad_id, self.opts.batch_size, self.device,
                              self.opts.precision)
        m = (classification_metrics if self.hc.task == "classify" else regression_metrics)(self.y_val, pred)
        return m[self.metric], m

    def improves(self, value: float, best: Optional[float]) -> bool:
        if not np.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if higher_is_better(self.metric) else value < best

    def scores(self, value: Optional[float]) -> dict:
        return {f"val_{self.metric}": value}

    def save(self, folder: Path, training_state: dict, value: Optional[float], state: TrainState) -> Path:
        return self.model.save_pretrained(folder, self.tok, training_state=training_state,
                                          meta={**self.meta, "step": state.step, f"val_{self.metric}": value})

    def start(self, rank: int, main: bool) -> None:
        """The run's settings in ``finetune.json`` (the RNG stream goes on from the head's initialisation)."""
        atomic_write_json(self.files.finetune, self.settings)

    def postfix(self, value: float, tokens_per_s: float, state: TrainState) -> dict:
        show = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        return {"loss": f"{value:.3f}", self.metric: show(state.last_val), "best": show(state.best_val)}


# ---------------------------------------------------------------------- the run
def _prepare_run(files: RunFiles, inputs: dict, checkpoint, opts: FinetuneOptions, resume: bool):
    """(inputs, checkpoint, opts) for this invocation; a resumed run takes the saved ones (but the
    new max_steps / max_time)."""
    run, has_ck = files.root, files.has_checkpoints()
    if not resume:
        if has_ck:
            raise ConfigError(f"{run}: already holds a fine-tuning run; pass --resume to continue it, or choose "
                              f"another --out")
        if checkpoint is None:
            raise ConfigError("--checkpoint is required: the pretrained model (a `seqformer pretrain` run folder)")
        return inputs, checkpoint, opts
    if not has_ck or not files.finetune.is_file():
        raise CheckpointError(f"{run}: nothing to resume (no {files.finetune.name} and checkpoints/step-*); start a "
                              f"new run without --resume")
    saved = json.loads(files.finetune.read_text())
    new = FinetuneOptions(**{**saved["options"], "max_steps": opts.max_steps, "max_time": opts.max_time})
    given = any(v for k, v in inputs.items() if k != "strict")
    return (inputs if given else {**saved["inputs"], "strict": inputs.get("strict", False)}), saved["checkpoint"], new


def _datasets(inputs: dict, tokenizer, max_len: int, opts: FinetuneOptions):
    train, val = load_inputs(inputs, tokenizer)
    hc = head_config(train, opts)
    y = encode_labels(train, hc.task, hc.classes or None)
    if val is None:
        tr, va = split_validation(y, opts.val_fraction, opts.seed, stratify=hc.task == "classify")
        train, val, y, y_val = train.subset(tr), train.subset(va), y[tr], y[va]
    else:
        y_val = encode_labels(val, hc.task, hc.classes or None)
    check_lengths(train, max_len)
    check_lengths(val, max_len)
    return train, y, val, y_val, hc


def _check_options(opts: FinetuneOptions) -> None:
    for name in ("batch_size", "max_steps", "eval_every"):
        if getattr(opts, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("seqformer finetune runs in one process; start it without torchrun")


def finetune(inputs: dict, checkpoint, out, opts: FinetuneOptions, resume: bool = False, progress: bool = True,
             echo: Callable[[str], None] = print,
             on_step: Optional[Callable[[int, float], None]] = None) -> FinetuneResult:
    """Fine-tune the pretrained model ``checkpoint`` on ``inputs`` ({"tsv", "fasta", "classes", "val"});
    the run folder ``out`` gets checkpoints, metrics.jsonl, loss_curve.png, finetune.json and
    result.json. With ``resume`` the run in ``out`` continues (its saved inputs and options, the
    new ``max_steps``/``max_time``). ``on_step(step, loss)`` is called after every optimizer step."""
    files = RunFiles(Path(out))
    inputs, checkpoint, opts = _prepare_run(files, inputs, checkpoint, opts, resume)
    _check_options(opts)
    freeze = parse_freeze(opts.freeze)
    device = resolve_device(opts.device)
    backbone, tokenizer, info = load_pretrained(checkpoint)
    train, y, val, y_val, hc = _datasets(inputs, tokenizer, backbone.config.max_seq_len, opts)
    torch.manual_seed(opts.seed)
    model = SequenceModel(backbone, hc).to(device)
    apply_freeze(model, freeze)
    meta = {"pretrained": info["path"], "task": hc.task, "train_size": len(train), "val_size": len(val)}
    if not resume:
        fit_standardizer(model, train.tokens, tokenizer.pad_id, device, opts.batch_size)
    settings = {"inputs": inputs, "checkpoint": str(checkpoint), "options": asdict(opts), "head": hc.to_dict()}
    task = FinetuneTask(model, tokenizer, train, y, val, y_val, opts, freeze, files, device, meta, settings)
    trainer = Trainer(task, files, resume, device, Dist(device), progress, echo, on_step)
    signum = trainer.run()
    st = trainer.state
    result = FinetuneResult(files.root, st.step, st.stopped_by, task.metric, st.best_val, st.best_step,
                            resolve_checkpoint(files.root, prefer="best"), trainer.train_time(), signum)
    atomic_write_json(files.result, {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()})
    return result
