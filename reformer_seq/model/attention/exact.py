"""Exact attention with the same conventions as LSH attention (the reference, and a fast path
for short sequences).

Shared query/key (Reformer, section 2): keys are the unit-normalised queries, and a query
attends to itself only when nothing else is visible (its self logit sits ``SELF_VALUE`` below
the rest, which a softmax turns into weight zero unless it is alone). Runs on
``torch.nn.functional.scaled_dot_product_attention`` with an additive mask; memory is
quadratic in L, so use it for short inputs: a length whose dense bias would pass the execution
policy's ``dense_max_elems`` elements raises :class:`~reformer_seq.errors.ConfigError` naming the
alternatives instead of trying to allocate it (16 GiB at 64K tokens).

Letters: B batch, H heads, L length, D head width.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunked import SELF_VALUE
from ...errors import ConfigError
from ...runtime.policy import current_policy

# The most elements of the dense (L, L) bias (per sequence with padding) a ``full`` layer builds is
# the execution policy's dense_max_elems: 2**28 float32 = 1 GiB by default, i.e. L = 16,384. The
# attention weights are as large again.


def check_dense_size(L: int, batch: int = 1) -> None:
    """Raise ConfigError when ``full`` attention at length ``L`` would build more than
    the execution policy's ``dense_max_elems`` bias elements (``batch`` sequences with padding)."""
    n, limit = batch * L * L, current_policy().dense_max_elems
    if n > limit:
        raise ConfigError(
            f"full attention at length {L:,} would build a dense ({'B, ' if batch > 1 else ''}L, L) bias of "
            f"{n:,} elements ({n * 4 / 2**30:.1f} GiB), over the limit of {limit:,} "
            f"(ExecutionPolicy.dense_max_elems in reformer_seq.runtime.policy, L = {math.isqrt(limit // batch):,}); "
            f"use 'lsh' or 'local' layers for long inputs: set model.attn_layers (e.g. [local, lsh]) or "
            f"model.attention: lsh, or split the input into shorter windows")


def attention_bias(real: Optional[Tensor], L: int, causal: bool, self_value: Optional[float],
                   device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive logit bias, (L, L) or (B, 1, L, L) when padding is given.

    -inf where a key is invisible (future in causal mode, or padding); ``self_value`` on the
    diagonal. The diagonal is never -inf, so every row keeps one finite entry. Lengths past
    the policy's ``dense_max_elems`` raise ConfigError.
    """
    check_dense_size(L, 1 if real is None else real.shape[0])
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
    check_dense_size(L, 1 if real is None else q.shape[0])  # the weights are quadratic even without a bias
    if real is None and self_value is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    bias = attention_bias(real, L, causal, self_value, q.device, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
