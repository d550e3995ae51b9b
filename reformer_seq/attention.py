"""Multi-head self-attention layer: projections, pre-norm, and the choice of kernel.

One layer of kind ``lsh`` (Reformer section 2), ``full`` (exact) or ``local`` (sliding window).
``lsh`` and ``full`` share query and key (``to_qk``; keys are unit-normalised queries), so an
LSH layer's weights run unchanged with exact attention. ``local`` has its own key projection
and lets a position attend to itself.

Letters: B batch, L length, Lp padded length, H heads, D head width, G = B * H.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chunked_attention import chunked_attention
from .full_attention import full_attention
from .local_attention import local_layout
from .lsh_attention import bucket_bits, hash_rotations, lsh_layout, n_hash_factors


class SelfAttention(nn.Module):
    """Pre-norm self-attention: (B, L, dim) -> (B, L, dim)."""

    def __init__(self, dim: int, heads: int, dim_head: int, kind: str = "lsh", causal: bool = True,
                 bucket_size: int = 16, n_hashes: int = 4, n_buckets: Optional[int] = None,
                 local_window: int = 64, dropout: float = 0.0, hash_seed: int = 0):
        super().__init__()
        self.kind, self.causal, self.heads, self.dim_head = kind, causal, heads, dim_head
        self.bucket_size, self.n_hashes, self.n_buckets = bucket_size, n_hashes, n_buckets
        self.local_window, self.hash_seed = local_window, hash_seed
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_qk = nn.Linear(dim, inner, bias=False)
        if kind == "local":
            self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.drop = nn.Dropout(dropout)

    def _heads(self, t: Tensor, Lp: int) -> Tensor:
        """(B, L, H*D) -> (B, H, Lp, D), zero-padded on the right."""
        B, L, _ = t.shape
        t = t.view(B, L, self.heads, self.dim_head).transpose(1, 2)  # (B, H, L, D)
        return F.pad(t, (0, 0, 0, Lp - L)) if Lp > L else t

    def _rows(self, t: Tensor, Lp: int) -> Tensor:
        """(B, L, H*D) -> (B, Lp, H, D), zero-padded on the right (a view when Lp == L)."""
        B, L, _ = t.shape
        t = t.view(B, L, self.heads, self.dim_head)
        return F.pad(t, (0, 0, 0, 0, 0, Lp - L)) if Lp > L else t

    def _rotations(self, n_factors: int, device: torch.device) -> Tensor:
        gen = None
        if not self.training:  # eval: the same rotations every call
            gen = torch.Generator(device=device)
            gen.manual_seed(self.hash_seed)
        return hash_rotations(self.heads, self.dim_head, self.n_hashes, n_factors, device=device, generator=gen)

    def forward(self, x: Tensor, real: Optional[Tensor] = None, real_len: Optional[Tensor] = None,
                cache: Optional[dict] = None) -> Tensor:
        """x: (B, L, dim); real: (B, L) bool, False = padding; real_len: (B,) count of real tokens.

        ``cache``: a dict kept between the forward pass and the reversible backward's
        recomputation, so the recomputation reuses the forward's hashes, sort order and (for
        inputs up to ``CACHE_MAX_ELEMS``) attention output.
        """
        B, L, _ = x.shape
        h = self.norm(x)
        qk = self.to_qk(h)
        v = self.to_v(h)
        if self.kind == "full":
            q = self._heads(qk, L)
            out = full_attention(q, F.normalize(q, dim=-1), self._heads(v, L), real, self.causal)
            out = out.transpose(1, 2)  # (B, L, H, D)
        else:
            chunk = self.bucket_size if self.kind == "lsh" else self.local_window
            Lp = math.ceil(L / chunk) * chunk
            real_p = torch.ones(B, L, dtype=torch.bool, device=x.device) if real is None else real
            real_p = F.pad(real_p, (0, Lp - L), value=False)  # (B, Lp)
            q = self._rows(qk, Lp)  # (B, Lp, H, D): the projection's own layout, no transpose
            if self.kind == "lsh":
                k = None  # shared-QK: keys are the normalised queries
                if real_len is None:
                    real_len = real_p.sum(1)
                bits = bucket_bits(real_len, self.bucket_size, self.n_buckets)
                # drawn even when the layout is cached, so later random draws (dropout) replay alike
                rot = self._rotations(n_hash_factors(bits), x.device)
                lay = cache.get("layout") if cache is not None else None
                if lay is None:
                    with torch.no_grad():
                        lay = lsh_layout(q.detach().transpose(1, 2), real_p, bits, rot, self.n_hashes,
                                         self.bucket_size, self.causal)
                    if cache is not None:
                        cache["layout"] = lay
            else:
                k = self._rows(self.to_k(h), Lp)
                lay = local_layout(real_p, self.heads, self.local_window, self.causal)
            out = chunked_attention(q, k, self._rows(v, Lp), lay, cache=cache)[:, :L]  # (B, L, H, D)
        out = out.reshape(B, L, self.heads * self.dim_head)  # (B, L, H*D)
        return self.drop(self.to_out(out))
