"""Local (sliding-window) attention: each position attends to its near neighbours.

Reformer's enwik8 models (trax) mix local attention layers with LSH layers; content hashing
rarely puts a base in the same bucket as its immediate neighbours, and DNA's short-range
(k-mer) structure lives there. Runs on the chunked kernel of :mod:`.chunked` with
the identity order: chunks of ``W`` positions look at the previous chunk (and, without
causality, the next one), and a static band picks the neighbours:

* causal: query ``i`` sees keys ``i - W .. i`` (``0 <= i - j <= W``);
* bidirectional: keys ``i - W .. i + W``.

Real positions share one bucket; each padded position has a bucket of its own, so real
queries never see padding.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .chunked import Layout

def local_layout(real: Tensor, heads: int, window: int, causal: bool) -> Layout:
    """Layout of local attention. real: (B, L) bool (False = padding), L a multiple of window."""
    B, L = real.shape
    pos = torch.arange(L, device=real.device, dtype=torch.int32).expand(B, L)
    buckets = torch.where(real, torch.zeros_like(pos), pos + 1)  # padding: a bucket per position
    buckets = buckets.repeat_interleave(heads, dim=0).unsqueeze(0)  # (1, G, L)
    band_lo, fwd = (0, 0) if causal else (-window, 1)
    return Layout(perm=None, buckets=buckets, band_lo=band_lo, band_hi=window, u=None, lo=0, hi=0,
                  chunk=window, back=1, fwd=fwd, self_fallback=False)
