"""A sequence-level head on a pretrained ReformerLM: classification or regression, and prediction.

:class:`SequenceModel` = backbone (:class:`~reformer_seq.model.lm.ReformerLM`) + :class:`SequenceHead`.
The head pools the backbone's hidden states at one layer (``layer``; default the final output,
see :meth:`ReformerLM.encode`) over the real (unpadded) positions, by their mean or by attention
pooling (a learned score per position, softmax over positions; its scores start at zero, so it
starts as the mean), then standardizes the pooled vector with a fixed per-feature centre and
scale measured on the training set before training (the pooled embeddings of a language model
share a large common component; see the README), then applies a linear layer or a small MLP.
Regression targets are standardized the same way; the head's output is mapped back.

A fine-tuned checkpoint is a normal checkpoint folder (:mod:`.checkpoint`): ``model.safetensors``
holds ``backbone.*`` and ``head.*``; ``config.json`` adds a ``finetune`` section (the
:class:`HeadConfig`). :meth:`SequenceModel.from_pretrained` loads one; :func:`predict_fasta`
scores a FASTA file with it. The training loop is in :mod:`.train`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import CheckpointError, ConfigError
from ...model.lm import ReformerLM
from ...types import PathLike

POOLS = ("mean", "attention")


@dataclass
class HeadConfig:
    """What the head computes; stored as the ``finetune`` section of a checkpoint's config.json."""

    task: str  # classify | regress
    classes: list[str] = field(default_factory=list)  # classify: the class names, in output order
    pool: str = "mean"  # mean | attention
    hidden: int = 0  # 0: linear layer; > 0: MLP with this many hidden units
    layer: Optional[int] = None  # backbone layer pooled (None: the final output)
    dropout: float = 0.1
    target_mean: float = 0.0  # regress: targets are standardized with these
    target_std: float = 1.0

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ConfigError(f"--pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.hidden < 0:
            raise ConfigError(f"--hidden must be >= 0 (0: a linear head), got {self.hidden}")

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "classify" else 1

    def to_dict(self) -> dict:
        return asdict(self)


def masked_mean(h: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean over positions (B, L, D) -> (B, D), real positions only when ``mask`` (B, L) is given."""
    if mask is None:
        return h.mean(1)
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class SequenceHead(nn.Module):
    """Pool (mean or attention) -> standardize -> linear or MLP."""

    center: Tensor  # buffers (D,): the standardisation of the pooled features
    scale: Tensor

    def __init__(self, dim: int, config: HeadConfig):
        super().__init__()
        self.config = config
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.score = nn.Linear(dim, 1) if config.pool == "attention" else None
        if self.score is not None:
            nn.init.zeros_(self.score.weight)
            nn.init.zeros_(self.score.bias)
        n = config.n_outputs
        if config.hidden:
            self.out = nn.Sequential(nn.Linear(dim, config.hidden), nn.GELU(), nn.Dropout(config.dropout),
                                     nn.Linear(config.hidden, n))
        else:
            self.out = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(dim, n))

    def pool(self, h: Tensor, mask: Optional[Tensor]) -> Tensor:
        """(B, L, D) hidden states -> (B, D) pooled vectors."""
        if self.score is None:
            return masked_mean(h, mask)
        s = self.score(h).squeeze(-1)  # (B, L)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        w = torch.softmax(s.float(), dim=1).to(h.dtype)
        return torch.einsum("bl,bld->bd", w, h)

    def forward(self, h: Tensor, mask: Optional[Tensor]) -> Tensor:
        z = (self.pool(h, mask).float() - self.center) / self.scale
        return self.out(z)  # (B, n_outputs)


class SequenceModel(nn.Module):
    """Backbone + head: tokens (B, L) -> (B, n_outputs) logits (classify) or standardized values."""

    def __init__(self, backbone: ReformerLM, config: HeadConfig):
        super().__init__()
        backbone.resolve_layer(config.layer)  # checks the layer exists
        self.backbone = backbone
        self.head = SequenceHead(backbone.config.dim, config)
        self.head_config = config

    def features(self, tokens: Tensor, mask: Optional[Tensor]) -> Tensor:
        return self.backbone.encode(tokens, mask, layer=self.head_config.layer)  # (B, L, D)

    def forward(self, tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self.head(self.features(tokens, mask), mask)

    def outputs(self, raw: Tensor) -> Tensor:
        """Class probabilities (B, C), or values (B,) in the targets' units."""
        if self.head_config.task == "classify":
            return torch.softmax(raw.float(), dim=-1)
        return raw.float().squeeze(-1) * self.head_config.target_std + self.head_config.target_mean

    def save_pretrained(self, folder: PathLike, tokenizer, training_state: Optional[dict] = None,
                        meta: Optional[dict] = None) -> Path:
        """Write the checkpoint folder atomically (backbone + head, config.json with ``finetune``)."""
        from ...runtime.checkpoint import save_checkpoint

        return save_checkpoint(self, self.backbone.config, tokenizer.spec(), folder, training_state=training_state,
                               meta={**(meta or {}), "finetune": self.head_config.to_dict()})

    @classmethod
    def from_pretrained(cls, path: PathLike, map_location: str = "cpu") -> SequenceModel:
        """A fine-tuned model from its checkpoint folder or its run folder (the best checkpoint)."""
        return load_finetuned(path, map_location)[0]


def load_finetuned(path: PathLike, map_location: str = "cpu"):
    """(model, tokenizer, info) from a fine-tuned checkpoint or run folder."""
    from ...runtime.checkpoint import load_model_weights, read_checkpoint_config, resolve_checkpoint
    from ...config import ReformerConfig
    from ...genome.tokenizers import tokenizer_from_spec

    folder = resolve_checkpoint(path)
    info = read_checkpoint_config(folder)
    if "finetune" not in info:
        raise CheckpointError(f"{folder}: a pretrained language model, not a fine-tuned one; fine-tune it first "
                              f"with `seqformer finetune --checkpoint {path} ...`")
    try:
        cfg = ReformerConfig.from_dict(info["model"], where=f"{folder} model")
        head = HeadConfig(**info["finetune"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{folder}: bad config.json ({e})") from None
    model = SequenceModel(ReformerLM(cfg), head)
    load_model_weights(model, folder, map_location)
    return model, tokenizer_from_spec(info["tokenizer"]), {**info, "path": str(folder)}


# ---------------------------------------------------------------------- batches and inference
def pad_batch(tokens: Sequence[np.ndarray], pad_id: int, device: torch.device) -> tuple[Tensor, Optional[Tensor]]:
    """Right-padded (B, Lmax) int64 tokens and a (B, Lmax) bool mask (None when nothing is padded)."""
    lmax = max(len(t) for t in tokens)
    x = np.full((len(tokens), lmax), pad_id, np.int64)
    m = np.zeros((len(tokens), lmax), bool)
    for i, t in enumerate(tokens):
        x[i, :len(t)] = t
        m[i, :len(t)] = True
    mask = None if m.all() else torch.from_numpy(m).to(device)
    return torch.from_numpy(x).to(device), mask


@torch.no_grad()
def predict_tokens(model: SequenceModel, tokens: Sequence[np.ndarray], pad_id: int, batch_size: int = 32,
                   device: Optional[torch.device] = None, precision: str = "fp32", progress: bool = False
                   ) -> np.ndarray:
    """Probabilities (N, C) or values (N,) for token arrays, in order (eval mode, fork of the RNG)."""
    from tqdm.auto import tqdm

    from ...runtime.device import autocast

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    order = np.argsort([-len(t) for t in tokens], kind="stable")  # similar lengths together: less padding
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for s in tqdm(range(0, len(tokens), batch_size), disable=not progress, desc="predict", unit="batch"):
                idx = order[s:s + batch_size]
                x, mask = pad_batch([tokens[i] for i in idx], pad_id, device)
                with autocast(device, precision):
                    out.append(model.outputs(model(x, mask)).cpu().numpy())
    finally:
        model.train(was_training)
    result = np.concatenate(out) if out else np.zeros((0,))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return result[inverse]


@dataclass
class PredictSummary:
    out: str
    n_records: int
    seconds: float
    checkpoint: str

    def line(self) -> str:
        return (f"predicted {self.n_records:,} record(s) in {self.seconds:.1f} s with {self.checkpoint} "
                f"-> {self.out}")


def predict_fasta(fasta: PathLike, checkpoint: PathLike, out: PathLike, batch_size: int = 32,
                  device: str = "auto", precision: str = "fp32", progress: bool = True,
                  strict: bool = False) -> PredictSummary:
    """Score every record of ``fasta``; write a TSV (one row per record, file order) atomically.
    ``strict``: characters outside IUPAC are an error (else N).

    Columns: ``id``, ``length``, then ``predicted`` (the most probable class) and ``p_CLASS`` per
    class for a classifier, or ``value`` for a regressor.
    """
    from ...runtime.files import atomic_write_text
    from ...runtime.device import resolve_device
    from ...genome.fasta import read_records
    from ...genome.labelled import LabelledSet, check_lengths, encode_checked

    t0 = time.perf_counter()
    model, tokenizer, info = load_finetuned(checkpoint)
    recs = list(read_records(fasta))
    data = LabelledSet([r.id for r in recs], [encode_checked(tokenizer, r.sequence, strict, f"{fasta}: record {r.id!r}")
                                              for r in recs], [""] * len(recs),
                       str(fasta))
    check_lengths(data, model.backbone.config.max_seq_len)
    dev = resolve_device(device)
    model.to(dev)
    pred = predict_tokens(model, data.tokens, tokenizer.pad_id, batch_size, dev, precision, progress)
    hc = model.head_config
    if hc.task == "classify":
        header = ["id", "length", "predicted"] + [f"p_{c}" for c in hc.classes]
        rows = [[rid, str(len(t)), hc.classes[int(p.argmax())]] + [f"{v:.6g}" for v in p]
                for rid, t, p in zip(data.ids, data.tokens, pred)]
    else:
        header = ["id", "length", "value"]
        rows = [[rid, str(len(t)), f"{v:.6g}"] for rid, t, v in zip(data.ids, data.tokens, pred)]
    atomic_write_text(out, "\n".join("\t".join(r) for r in [header] + rows) + "\n")
    return PredictSummary(str(out), len(rows), time.perf_counter() - t0, info["path"])
