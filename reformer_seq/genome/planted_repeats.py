"""Planted repeats: copies of a window's own segments pasted later into the same window.

Training sequence that contains repeats teaches the copy attention (:mod:`reformer_seq.model.attention.copy_attention`)
when to trust an earlier copy. Real genomes have repeats, but a 4K-base window of a bacterial
genome rarely holds one, so a share of training windows get planted ones: a segment of
log-uniform length is copied (direct, or as its reverse complement) to a later place in the
same window, with a light sprinkle of substitutions so the model also learns diverged copies.
Everything is drawn from a generator seeded per (seed, epoch, window), so runs replay exactly.
Validation windows are never changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .tokenizers import BASE_IDS


@dataclass(frozen=True)
class RepeatPlanting:
    """How often and what to plant (the DataConfig fields ``plant_*`` fill it)."""

    rate: float = 0.5  # share of training windows that get planted copies
    copies: int = 2  # copies pasted into such a window
    min_len: int = 32  # segment length, drawn log-uniformly from [min_len, max_len]
    max_len: int = 1024
    rc_fraction: float = 0.5  # share of copies pasted as the reverse complement
    max_mutation: float = 0.05  # each copy's substitution rate is uniform in [0, max_mutation]


def plant_repeats(ids: np.ndarray, rng: np.random.Generator, plan: RepeatPlanting,
                  reverse_complement: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, list[tuple]]:
    """A copy of ``ids`` (L,) with ``plan.copies`` segments pasted later in the window.

    Returns the new ids and one ``(src, dst, length, is_rc)`` row per copy: ``out[dst:dst+length]``
    is ``ids'[src:src+length]`` (or its reverse complement) up to the substitutions, where ``ids'``
    is the sequence as it was when that copy was made (copies may overlap earlier ones).
    """
    out = np.array(ids, copy=True)
    L = len(out)
    done: list[tuple] = []
    if rng.random() >= plan.rate:
        return out, done
    for _ in range(plan.copies):
        hi = min(plan.max_len, L // 2)
        if hi < plan.min_len:
            break
        m = int(math.exp(rng.uniform(math.log(plan.min_len), math.log(hi + 1))))
        m = max(plan.min_len, min(m, hi))
        src = int(rng.integers(0, L - 2 * m + 1))
        dst = int(rng.integers(src + m, L - m + 1))
        seg = out[src:src + m].copy()
        is_rc = bool(rng.random() < plan.rc_fraction)
        if is_rc:
            seg = reverse_complement(seg).astype(out.dtype)
        rate = rng.uniform(0.0, plan.max_mutation)
        hit = rng.random(m) < rate
        seg[hit] = rng.choice(np.asarray(BASE_IDS, dtype=out.dtype), int(hit.sum()))
        out[dst:dst + m] = seg
        done.append((src, dst, m, is_rc))
    return out, done
