"""The optimizer and its learning-rate schedule: AdamW with weight decay on matrices only, linear
warmup then cosine decay, and the schedule's length under a time budget."""
from __future__ import annotations

import math

import torch

from .distributed import Dist


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


def fit_horizon(step: int, now: float, since: tuple[int, float], tcfg, dist: Dist) -> int:
    """Steps that fit in ``tcfg.max_time`` at the speed measured since step ``since[0]`` (a 10%
    margin for validation and checkpoints), capped by ``max_steps``; the same on every rank.
    The cosine schedule of a run with a time budget ends there."""
    s0, t0 = since
    per_step = (now - t0) / max(step - s0, 1)
    fit = step + int(0.9 * (tcfg.max_time - now) / max(per_step, 1e-9))
    t = dist.all_reduce_(dist.tensor([float(min(tcfg.max_steps, max(step + 1, fit)))]), average=False, op="min")
    return int(t.item())
