"""Fine-tuning: train a :class:`~reformer_seq.tasks.finetune.model.SequenceModel` on labelled sequences.

AdamW (the pretraining optimizer, :func:`~reformer_seq.tasks.training.optim.make_optimizer`) with a linear
warmup and then a constant learning rate (the backbone's scaled by ``backbone_lr_scale``),
gradient clipping, optional bf16 autocast; ``head_steps`` > 0 trains the head alone first
(linear probing, then fine-tuning). ``freeze``:
``"all"`` trains the head only (the backbone runs in eval mode and its parameters never change),
``"none"`` trains everything, an integer N trains the head, the final norm and the top N blocks.

Every ``eval_every`` steps the model is scored on the validation set (AUROC or accuracy for
classification, Pearson r or MSE for regression; :mod:`.metrics`), a checkpoint is written
(``checkpoints/step-*``, ``latest.json``; ``best.json`` points at the best validation score), and
training stops early after ``patience`` evaluations without improvement. ``metrics.jsonl`` and
``curve.png`` record the run. The batch of step s is a pure function of s and the seed (epoch
e = s // batches-per-epoch is a seeded permutation), and the checkpoint keeps the optimizer and
RNG state, so ``resume=True`` continues exactly: k steps, resume, k more == 2k steps.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ...runtime.checkpoint import STATE_FILE, resolve_checkpoint
from ..pretrained import load_pretrained
from ...runtime.files import atomic_write, atomic_write_json
from ...errors import CheckpointError, ConfigError
from .model import HeadConfig, SequenceModel, masked_mean, pad_batch, predict_tokens
from ...genome.labelled import (LabelledSet, check_lengths, class_names, encode_labels, infer_task, read_class_fastas,
                            read_tsv, split_validation)
from .metrics import (CLASSIFY_METRICS, REGRESS_METRICS, classification_metrics, default_metric, higher_is_better,
                      regression_metrics)
from ..training.optim import lr_at, make_optimizer
from ..training.run_folder import (RunFiles, append_metrics, point_to_checkpoint, prune_checkpoints,
                                   truncate_metrics)
from ..training.stop import StopFlag
from ...runtime.device import autocast, resolve_device

RUN_FILE = "finetune.json"


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


# ---------------------------------------------------------------------- the run
class _Trainer:
    """One fine-tuning run: state, one step, evaluation, checkpoints."""

    def __init__(self, model: SequenceModel, tokenizer, train: LabelledSet, y_train: np.ndarray, val: LabelledSet,
                 y_val: np.ndarray, opts: FinetuneOptions, run: Path, device: torch.device, meta: dict):
        self.model, self.tok, self.train, self.val = model, tokenizer, train, val
        self.y_train, self.y_val, self.opts, self.run, self.device, self.meta = y_train, y_val, opts, run, device, meta
        self.hc = model.head_config
        self.metric = opts.metric or default_metric(self.hc.task, len(self.hc.classes))
        self.opt = make_optimizer(model.head, opts.lr, opts.weight_decay, (0.9, 0.999))
        backbone = make_optimizer(model.backbone, opts.lr * opts.backbone_lr_scale, opts.weight_decay, (0.9, 0.999))
        for group in backbone.param_groups:
            if group["params"]:
                self.opt.add_param_group(group)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_at(s, 1.0, opts.warmup_steps, 1, 1.0))
        self.step, self.train_before = 0, 0.0
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.bad_evals = 0
        self.n_batches = max(1, len(train) // opts.batch_size)

    def batch_indices(self, step: int) -> np.ndarray:
        epoch, b = divmod(step, self.n_batches)
        g = torch.Generator().manual_seed(self.opts.seed * 100003 + epoch)
        perm = torch.randperm(len(self.train), generator=g).numpy()
        return perm[b * self.opts.batch_size:(b + 1) * self.opts.batch_size]

    def loss(self, raw: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.hc.task == "classify":
            return F.cross_entropy(raw.float(), y)
        return F.mse_loss(raw.float().squeeze(-1), (y - self.hc.target_mean) / self.hc.target_std)

    def train_step(self) -> float:
        idx = self.batch_indices(self.step)
        x, mask = pad_batch([self.train.tokens[i] for i in idx], self.tok.pad_id, self.device)
        y = torch.from_numpy(self.y_train[idx]).to(self.device)
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.opts.precision):
            raw = self.model(x, mask)
        loss = self.loss(raw, y)
        loss.backward()
        if self.step < self.opts.head_steps:  # head first: the backbone's gradients are dropped
            for p in self.model.backbone.parameters():
                p.grad = None
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.opts.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        return float(loss.detach())

    def evaluate(self) -> dict:
        pred = predict_tokens(self.model, self.val.tokens, self.tok.pad_id, self.opts.batch_size, self.device,
                              self.opts.precision)
        if self.hc.task == "classify":
            return classification_metrics(self.y_val, pred)
        return regression_metrics(self.y_val, pred)

    def improved(self, value: float) -> bool:
        if not np.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if higher_is_better(self.metric) else value < self.best

    def state(self, train_time: float) -> dict:
        return {"step": self.step, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "rng": torch.get_rng_state(), "train_time": train_time, "best": self.best,
                "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state(self, ck: Path) -> None:
        st = torch.load(ck / STATE_FILE, map_location="cpu", weights_only=True)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["rng"])
        self.step, self.train_before = st["step"], st["train_time"]
        self.best, self.best_step, self.bad_evals = st["best"], st["best_step"], st["bad_evals"]

    def save(self, train_time: float, value: Optional[float], is_best: bool) -> Path:
        folder = self.model.save_pretrained(RunFiles(self.run).checkpoint(self.step), self.tok,
                                            training_state=self.state(train_time),
                                            meta={**self.meta, "step": self.step, f"val_{self.metric}": value})
        point_to_checkpoint(self.run, folder, self.step, is_best, **{f"val_{self.metric}": value})
        prune_checkpoints(self.run, keep_last=1)
        return folder

    def log(self, row: dict) -> None:
        append_metrics(self.run / "metrics.jsonl", row)


def plot_curve(metrics_path: Path, png_path: Path, metric: str) -> None:
    """Training loss and the validation metric against step, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]
    val = [(r["step"], r[metric]) for r in rows if r["kind"] == "val" and r.get(metric) is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.6, label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax2 = ax.twinx()
    if val:
        ax2.plot(*zip(*val), "o-", color="C1", label=f"validation {metric}")
    ax2.set_ylabel(f"validation {metric}")
    fig.legend(loc="upper right")
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
    plt.close(fig)


def _prepare_run(run: Path, inputs: dict, checkpoint, opts: FinetuneOptions, resume: bool):
    """(inputs, checkpoint, opts) for this invocation; a resumed run takes the saved ones (but the
    new max_steps / max_time)."""
    has_ck = RunFiles(run).has_checkpoints()
    if not resume:
        if has_ck:
            raise ConfigError(f"{run}: already holds a fine-tuning run; pass --resume to continue it, or choose "
                              f"another --out")
        if checkpoint is None:
            raise ConfigError("--checkpoint is required: the pretrained model (a `seqformer pretrain` run folder)")
        return inputs, checkpoint, opts
    if not has_ck or not (run / RUN_FILE).is_file():
        raise CheckpointError(f"{run}: nothing to resume (no {RUN_FILE} and checkpoints/step-*); start a new run "
                              f"without --resume")
    saved = json.loads((run / RUN_FILE).read_text())
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


def finetune(inputs: dict, checkpoint, out, opts: FinetuneOptions, resume: bool = False, progress: bool = True,
             echo: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune the pretrained model ``checkpoint`` on ``inputs`` ({"tsv", "fasta", "classes", "val"});
    the run folder ``out`` gets checkpoints, metrics.jsonl, curve.png and finetune.json."""
    run = Path(out)
    inputs, checkpoint, opts = _prepare_run(run, inputs, checkpoint, opts, resume)
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
    tr = _Trainer(model, tokenizer, train, y, val, y_val, opts, run, device, meta)
    if resume:
        from ...runtime.checkpoint import load_model_weights

        ck = resolve_checkpoint(run, prefer="latest")
        load_model_weights(model, ck, map_location=str(device))
        tr.load_state(ck)
        truncate_metrics(run / "metrics.jsonl", tr.step)
        echo(f"resuming {run} from step {tr.step:,}")
    else:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / RUN_FILE, {"inputs": inputs, "checkpoint": str(checkpoint), "options": asdict(opts),
                                           "head": hc.to_dict()})
        (run / "metrics.jsonl").unlink(missing_ok=True)
    return _loop(tr, freeze, progress)


def _loop(tr: _Trainer, freeze, progress: bool) -> FinetuneResult:
    from tqdm.auto import tqdm

    opts, model = tr.opts, tr.model
    model.train()
    if freeze == "all":
        model.backbone.eval()  # no dropout, fixed hashing: the frozen backbone is a fixed function
    t_loop = time.perf_counter()
    train_time = lambda: tr.train_before + time.perf_counter() - t_loop  # noqa: E731
    stopped, evaluated = "max_steps", -1
    bar = tqdm(total=opts.max_steps, initial=tr.step, disable=not progress, unit="step", desc="finetune",
               dynamic_ncols=True)

    def checkpoint() -> bool:
        """Validate and save; True when patience is used up."""
        m = tr.evaluate()
        value = m[tr.metric]
        is_best = tr.improved(value)
        if is_best:
            tr.best, tr.best_step, tr.bad_evals = value, tr.step, 0
        else:
            tr.bad_evals += 1
        tr.log({"kind": "val", "step": tr.step, **m, "time": train_time()})
        tr.save(train_time(), value, is_best)
        bar.set_postfix({tr.metric: f"{value:.3f}", "best": f"{tr.best:.3f}" if tr.best is not None else "-"})
        return tr.bad_evals >= opts.patience

    with StopFlag() as stop:
        while tr.step < opts.max_steps:
            if opts.max_time is not None and train_time() >= opts.max_time:
                stopped = "max_time"
                break
            loss = tr.train_step()
            bar.update(1)
            if tr.step % 10 == 0 or tr.step == 1:
                tr.log({"kind": "train", "step": tr.step, "loss": loss, "time": train_time()})
            if tr.step % opts.eval_every == 0:
                evaluated = tr.step
                if checkpoint():
                    stopped = "early_stop"
                    break
            if stop.signum is not None:
                stopped = "signal"
                break
        if evaluated != tr.step:
            checkpoint()
    bar.close()
    plot_curve(tr.run / "metrics.jsonl", tr.run / "curve.png", tr.metric)
    best = resolve_checkpoint(tr.run, prefer="best")
    result = FinetuneResult(tr.run, tr.step, stopped, tr.metric, tr.best, tr.best_step, best, train_time())
    atomic_write_json(tr.run / "result.json", {k: str(v) if isinstance(v, Path) else v
                                               for k, v in asdict(result).items()})
    return result
