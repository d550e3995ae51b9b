"""Local (sliding-window) attention: each position attends to its near neighbours.

Reformer's enwik8 models (trax) mix local attention layers with LSH layers; content hashing
rarely puts a base in the same bucket as its immediate neighbours, and DNA's short-range
(k-mer) structure lives there. Runs on the chunked kernel of :mod:`.chunked_attention` with
the identity order: chunks of ``W`` positions look at the previous chunk (and, without
causality, the next one), and the window key is the position itself:

* causal: query ``i`` sees keys ``i - W .. i`` (``0 <= i - j <= W``);
* bidirectional: keys ``i - W .. i + W``.

Padded positions get window keys far from every real one, so real queries never see them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .chunked_attention import Layout

_PAD_OFFSET = 1 << 29  # window-key offset of padded positions: out of every real query's reach


def local_layout(real: Tensor, heads: int, window: int, causal: bool) -> Layout:
    """Layout of local attention. real: (B, L) bool (False = padding), L a multiple of window."""
    B, L = real.shape
    pos = torch.arange(L, device=real.device, dtype=torch.int32).expand(B, L)
    u = torch.where(real, pos, pos + _PAD_OFFSET)  # (B, L)
    u = u.repeat_interleave(heads, dim=0).unsqueeze(0)  # (1, G, L)
    lo, fwd = (0, 0) if causal else (-window, 1)
    return Layout(perm=None, u=u, u_sorted=u, lo=lo, hi=window, chunk=window, back=1, fwd=fwd,
                  self_fallback=False)
