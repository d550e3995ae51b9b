"""The language-model loss and validation in bits: summed cross-entropy over the target
positions (the next base for the causal objective, the masked bases for the masked one), and
bits per target base over a held-out loader."""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F

from ...runtime.device import autocast

LN2 = math.log(2.0)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy (nats) over targets (labels != -100), and the number of targets."""
    n = int((labels != -100).sum())
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss, n


def batch_loss(model: torch.nn.Module, batch: dict, device: torch.device, precision: str
               ) -> tuple[torch.Tensor, int, torch.Tensor]:
    """``model``'s summed loss on one collated batch (under autocast), its number of targets, and
    the batch's attention mask (1 on real bases) on ``device``."""
    x, labels, mask = (batch[k].to(device) for k in ("input_ids", "labels", "attention_mask"))
    with autocast(device, precision):
        logits = model(x, mask=None if bool(mask.all()) else mask)
    loss, n = lm_loss(logits, labels)
    return loss, n, mask


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
            loss, n, _ = batch_loss(model, batch, device, precision)
            total += float(loss)
            count += n
    finally:
        model.train(was_training)
    return (total / max(count, 1) / LN2, count)
