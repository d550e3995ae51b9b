"""Exact attention with the same conventions as LSH attention (the reference, and a fast path
for short sequences).

Shared query/key (Reformer, section 2): keys are the unit-normalised queries, and a query
attends to itself only when nothing else is visible (its self logit sits ``SELF_VALUE`` below
the rest, which a softmax turns into weight zero unless it is alone). Runs on
``torch.nn.functional.scaled_dot_product_attention`` with an additive mask; memory is
quadratic in L, so use it for short inputs.

Letters: B batch, H heads, L length, D head width.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunked_attention import SELF_VALUE


def attention_bias(real: Optional[Tensor], L: int, causal: bool, self_value: Optional[float],
                   device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive logit bias, (L, L) or (B, 1, L, L) when padding is given.

    -inf where a key is invisible (future in causal mode, or padding); ``self_value`` on the
    diagonal. The diagonal is never -inf, so every row keeps one finite entry.
    """
    bias = torch.zeros(L, L, device=device, dtype=dtype)
    if causal:
        bias.masked_fill_(torch.ones(L, L, dtype=torch.bool, device=device).triu_(1), float("-inf"))
    eye = torch.eye(L, dtype=torch.bool, device=device)
    if real is not None:
        hidden = (~real)[:, None, None, :] & ~eye  # (B, 1, L, L): padded keys, except oneself
        bias = bias.expand(real.shape[0], 1, L, L).masked_fill(hidden, float("-inf"))
    if self_value is not None:
        bias = bias.masked_fill(eye, self_value)
    return bias


def full_attention(q: Tensor, k: Tensor, v: Tensor, real: Optional[Tensor], causal: bool,
                   self_value: Optional[float] = SELF_VALUE, scale: Optional[float] = None) -> Tensor:
    """Exact attention. q, k, v: (B, H, L, D); real: (B, L) bool or None -> (B, H, L, D)."""
    L, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if real is None and self_value is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    bias = attention_bias(real, L, causal, self_value, q.device, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
