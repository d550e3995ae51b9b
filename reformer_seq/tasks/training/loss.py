"""The language-model loss and validation in bits: summed cross-entropy over the target
positions (the next base for the causal objective, the masked bases for the masked one), and
bits per target base over a held-out loader."""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from ...runtime.device import autocast

LN2 = math.log(2.0)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, n: Optional[int] = None) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy (nats) over targets (labels != -100), and the number of targets
    (``n``: already counted, e.g. on the host copy of the labels)."""
    n = int((labels != -100).sum()) if n is None else n
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss, n


def batch_loss(model: torch.nn.Module, batch: dict, device: torch.device, precision: str
               ) -> tuple[torch.Tensor, int, torch.Tensor]:
    """``model``'s summed loss on one collated batch (under autocast), its number of targets, and
    the batch's attention mask (1 on real bases) as the batch holds it (the loader's host copy).
    What is counted is counted on that copy: no device-to-host sync on a GPU."""
    host_mask, host_labels = batch["attention_mask"], batch["labels"]
    full, n = bool(host_mask.all()), int((host_labels != -100).sum())
    x, labels, mask = (batch[k].to(device, non_blocking=True) for k in ("input_ids", "labels", "attention_mask"))
    with autocast(device, precision):
        logits = model(x, mask=None if full else mask)
    loss, n = lm_loss(logits, labels, n)
    return loss, n, host_mask


def val_sample(dataset, seq_len: int, val_bases: int, seed: int):
    """A fixed, seeded sample of ``dataset``'s windows holding about ``val_bases`` bases (the
    whole dataset when ``val_bases`` is 0 or it is smaller), in dataset order."""
    import numpy as np
    from torch.utils.data import Subset

    n = len(dataset)
    k = n if val_bases <= 0 else min(n, max(1, -(-val_bases // max(seq_len, 1))))
    if k == n:
        return dataset
    pick = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    return Subset(dataset, pick.tolist())


@torch.no_grad()
def validation_bits(model: torch.nn.Module, loader: Iterable[dict], device: torch.device, precision: str,
                    max_batches: int = 0) -> tuple[float, int, Optional[float]]:
    """(bits per target base, number of targets, its standard error over the batches; None with
    fewer than two) of ``model`` over ``loader``'s batches."""
    was_training = model.training
    model.eval()
    sums, counts = [], []
    try:
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            loss, n, _ = batch_loss(model, batch, device, precision)
            sums.append(float(loss))
            counts.append(n)
    finally:
        model.train(was_training)
    count = sum(counts)
    mean = sum(sums) / max(count, 1) / LN2
    return mean, count, ratio_stderr(sums, counts) if len(counts) > 1 and count else None


def ratio_stderr(sums: list[float], counts: list[int]) -> float:
    """Standard error, in bits, of ``sum(sums) / sum(counts)`` (nats per target) over the batches
    (the ratio estimator: residuals ``sums_b - mean * counts_b``)."""
    B, total = len(counts), sum(counts)
    mean = sum(sums) / total
    var = sum((s - mean * c) ** 2 for s, c in zip(sums, counts)) / (B - 1)
    return math.sqrt(B * var) / total / LN2
