"""The optimizer and its learning-rate schedule: AdamW with weight decay on matrices only, linear
warmup then cosine decay over the steps, or, under a time budget, over the clock.

With ``max_time`` the cosine's progress is the larger of the step fraction and the time fraction
(:func:`time_progress`: training time since warmup ended, plus the last step's duration, over
the time left then), so a run that slows down or speeds up part-way still decays and reaches the
minimum learning rate on its last step, when ``max_time`` stops it."""
from __future__ import annotations

import math

import torch

from .distributed import Dist


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_ratio: float, time_fraction: float = 0.0) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``base_lr * min_ratio`` at ``total``
    steps or at ``time_fraction`` 1 (see :func:`time_progress`), whichever comes first."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]
                   ) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases or embeddings)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def time_progress(now: float, last_step: float, warm_end: float, max_time: float) -> float:
    """The time budget's share used by the end of the next step: ``(now + last_step - warm_end) /
    (max_time - warm_end)`` in [0, 1], ``warm_end`` the training time when warmup ended."""
    return min(1.0, max(0.0, (now + last_step - warm_end) / max(max_time - warm_end, 1e-9)))


def fit_horizon(step: int, now: float, since: tuple[int, float], tcfg, dist: Dist) -> int:
    """Steps that fit in ``tcfg.max_time`` at the speed measured since step ``since[0]`` (a 10%
    margin for validation and checkpoints), capped by ``max_steps``; the same on every rank.
    An estimate for the progress bar (the schedule itself follows the clock: :func:`time_progress`)."""
    s0, t0 = since
    per_step = (now - t0) / max(step - s0, 1)
    fit = step + int(0.9 * (tcfg.max_time - now) / max(per_step, 1e-9))
    t = dist.all_reduce_(dist.tensor([float(min(tcfg.max_steps, max(step + 1, fit)))]), average=False, op="min")
    return int(t.item())
