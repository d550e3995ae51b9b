"""Chunked position-wise feed-forward (Reformer, section 3 "Chunking").

The feed-forward acts on each position alone, so it can run over the sequence a slice at a
time: the ``ff_mult * dim`` hidden activations of only ``chunk_size`` positions exist at once.
The result is exactly the unchunked one. The reversible stack's backward uses ``net`` on the
same slices, so its recomputation is chunked too.
"""
from __future__ import annotations

from torch import Tensor, nn
import torch

from ..runtime.policy import current_policy


# ``chunk_size=0`` (auto) takes the execution policy's chunk sizes (runtime/policy.py). Below its
# long_input_elems, 2**25 elements (256K tokens at dim 64 and less), 4096-position chunks keep the
# hidden buffers small enough for the allocator to reuse: ~100 MB less peak memory at 64K tokens.
# Long inputs return freed buffers to the OS (heap.py); there 16384 means fewer, larger buffers
# and less memory (1M tokens: 3.64 vs 3.84 GiB peak with 4096).


class FeedForward(nn.Module):
    """Pre-norm GELU MLP: (B, L, dim) -> (B, L, dim), computed ``chunk_size`` positions at a time."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0, chunk_size: int = 0):
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

    def slices(self, length: int, batch: int = 1) -> list[slice]:
        """The position slices the forward (and the reversible backward) walk through, in order.
        ``chunk_size`` 0 (auto): the policy's ``ff_chunk_short`` positions (4096) while
        batch * length * dim < ``long_input_elems`` (2**25), else ``ff_chunk_long`` (16384)."""
        pol = current_policy(self.w1.weight.device)
        long = batch * length * self.norm.normalized_shape[0] >= pol.long_input_elems
        cs = self.chunk_size or (pol.ff_chunk_long if long else pol.ff_chunk_short)
        return [slice(a, min(a + cs, length)) for a in range(0, length, cs)]

    def forward(self, x: Tensor) -> Tensor:
        sl = self.slices(x.shape[1], x.shape[0])
        if len(sl) == 1:
            return self.net(x)
        return torch.cat([self.net(x[:, s]) for s in sl], dim=1)

    @torch.no_grad()
    def add_to(self, out: Tensor, x: Tensor) -> Tensor:
        """``out += self(x)`` in place, slice by slice, without autograd; returns out (B, L, dim)."""
        for s in self.slices(x.shape[1], x.shape[0]):
            out[:, s] += self.net(x[:, s])
        return out
