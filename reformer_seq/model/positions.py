"""Axial positional encoding (trax's Reformer; Kitaev et al., ICLR 2020, appendix).

A learned embedding per position would need ``max_seq_len x dim`` parameters (67M at 1M
tokens and dim 64). Axial encoding factors positions as ``p = i * b + j`` over an ``(a, b)``
grid with ``a * b == max_seq_len`` and learns ``a + b`` vectors: ``pos(p) = row[i] + col[j]``.
Shorter inputs use the first L positions, or, with ``first_row``, the L positions from
``first_row * b`` on (training with random offsets trains every row with short windows).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import factor_axial


class AxialPositionalEncoding(nn.Module):
    """Positions 0..L-1 -> (L, dim) embeddings from an (a, b) grid."""

    def __init__(self, dim: int, shape: tuple[int, int], max_seq_len: int, init_std: float = 0.02):
        super().__init__()
        a, b = shape
        if a * b != max_seq_len:
            raise ValueError(
                f"axial_shape ({a}, {b}) covers {a * b:,} positions but max_seq_len is {max_seq_len:,}; "
                f"use {factor_axial(max_seq_len)}")
        self.shape, self.max_seq_len = (a, b), max_seq_len
        self.row = nn.Parameter(torch.randn(a, 1, dim) * init_std)  # (a, 1, dim)
        self.col = nn.Parameter(torch.randn(1, b, dim) * init_std)  # (1, b, dim)

    def random_first_row(self, length: int) -> int:
        """A uniformly drawn start row (torch's RNG) for an input of ``length`` positions."""
        free = self.shape[0] - math.ceil(length / self.shape[1])
        return int(torch.randint(0, free + 1, ())) if free > 0 else 0

    def forward(self, length: int, first_row: int = 0) -> Tensor:
        if length > self.max_seq_len:
            raise ValueError(f"sequence length {length:,} exceeds max_seq_len {self.max_seq_len:,}")
        rows = math.ceil(length / self.shape[1])
        if not 0 <= first_row <= self.shape[0] - rows:
            raise ValueError(f"first_row {first_row} + {rows} rows exceeds the grid's {self.shape[0]} rows")
        grid = self.row[first_row:first_row + rows] + self.col  # (rows, b, dim)
        return grid.reshape(-1, grid.shape[-1])[:length]  # (L, dim)
