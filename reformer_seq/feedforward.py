"""Chunked position-wise feed-forward (Reformer, section 3 "Chunking").

The feed-forward acts on each position alone, so it can run over the sequence a slice at a
time: the ``ff_mult * dim`` hidden activations of only ``chunk_size`` positions exist at once.
The result is exactly the unchunked one. The reversible stack's backward uses ``net`` on the
same slices, so its recomputation is chunked too.
"""
from __future__ import annotations

from torch import Tensor, nn
import torch


class FeedForward(nn.Module):
    """Pre-norm GELU MLP: (B, L, dim) -> (B, L, dim), computed ``chunk_size`` positions at a time."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0, chunk_size: int = 16384):
        super().__init__()
        self.chunk_size = chunk_size
        self.norm = nn.LayerNorm(dim)
        self.w1 = nn.Linear(dim, dim * mult)
        self.act = nn.GELU()
        self.w2 = nn.Linear(dim * mult, dim)
        self.drop = nn.Dropout(dropout)

    def net(self, x: Tensor) -> Tensor:
        """The unchunked computation on one slice (B, l, dim)."""
        return self.drop(self.w2(self.act(self.w1(self.norm(x)))))

    def slices(self, length: int) -> list[slice]:
        """The position slices the forward (and the reversible backward) walk through, in order."""
        return [slice(a, min(a + self.chunk_size, length)) for a in range(0, length, self.chunk_size)]

    def forward(self, x: Tensor) -> Tensor:
        sl = self.slices(x.shape[1])
        if len(sl) == 1:
            return self.net(x)
        return torch.cat([self.net(x[:, s]) for s in sl], dim=1)
