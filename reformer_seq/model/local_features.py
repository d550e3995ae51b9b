"""Input features for the reading frame: a causal convolution, k-mer (codon) embeddings, and
rotary positions for local attention.

A protein-coding gene is read three bases at a time, so most of a bacterial genome is
3-periodic: which of three frames a base sits in decides which codon it completes and which
stops cannot occur. A gene HMM infers the frame from the codon statistics of the last ~100
bases. These modules give the network the same raw material:

* :class:`CausalConv`: a depthwise causal convolution with a residual (dilation 1: the last
  ``kernel`` bases; dilation 3: one codon position over the last ``kernel`` codons);
* :class:`KmerEmbedding`: a learned vector for the k-mer ending at each position (k = 3: the
  codon the base completes), so a convolution over it sums codon usage per frame;
* :func:`rotary`: rotary position embedding (Su et al., *RoFormer*, 2021) for local attention,
  whose first frequency has period 3, so a query can prefer keys a whole number of codons back.

Letters: B batch, L length, C channels (dim), H heads, D head width.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..genome.tokenizers import NucleotideTokenizer


class CausalConv(nn.Module):
    """Depthwise causal convolution with a residual: each position mixes in its left neighbours
    (``kernel`` taps, ``dilation`` bases apart)."""

    def __init__(self, dim: int, kernel: int, dilation: int = 1):
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        self.conv = nn.Conv1d(dim, dim, kernel, groups=dim, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C)
        h = F.pad(x.transpose(1, 2), ((self.kernel - 1) * self.dilation, 0))  # (B, C, L + reach), left only
        return x + self.conv(h).transpose(1, 2)


def kmer_index(tokens: Tensor, k: int) -> Tensor:
    """Index of the k-mer ending at each position: (B, L) token ids -> (B, L) in [0, 4**k].

    A/C/G/T are 0-3 and the k-mer ``x[t-k+1..t]`` is read as a base-4 number; a k-mer with any
    other token in it (N, padding, a mask token, or before the sequence start) is ``4**k``.
    """
    lut = torch.full((256,), -1, dtype=torch.long, device=tokens.device)
    lut[torch.tensor(NucleotideTokenizer.base_ids, device=tokens.device)] = torch.arange(4, device=tokens.device)
    code = lut[tokens.long().clamp(0, 255)]  # (B, L): 0-3, or -1
    win = F.pad(code, (k - 1, 0), value=-1).unfold(1, k, 1)  # (B, L, k): win[..., i] = code[t - k + 1 + i]
    place = 4 ** torch.arange(k - 1, -1, -1, device=tokens.device)  # (k,): the oldest base is the top digit
    idx = (win.clamp(min=0) * place).sum(-1)  # (B, L)
    return torch.where((win < 0).any(-1), torch.full_like(idx, 4 ** k), idx)


class KmerEmbedding(nn.Module):
    """A learned vector for the k-mer ending at each position (strictly causal: it reads
    ``x[t-k+1..t]``, never ahead)."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.k = k
        self.emb = nn.Embedding(4 ** k + 1, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:  # (B, L) -> (B, L, C)
        return self.emb(kmer_index(tokens, self.k))


def rotary_frequencies(dim_head: int) -> list[float]:
    """Angular frequencies of the ``dim_head / 2`` rotated pairs: period 3 first (the codon), then
    periods 2, 4, 6, 9, 12, ... growing geometrically to the local window's scale."""
    n = dim_head // 2
    periods = [3.0, 2.0] + [4.0 * 1.6 ** i for i in range(max(0, n - 2))]
    return [2 * math.pi / p for p in periods[:n]]


def rotary(x: Tensor, offset: int = 0) -> Tensor:
    """Rotate pairs of features of x (B, L, H, D) by angle ``freq * position``: q.k of two
    rotated vectors depends on their positions only through the offset between them."""
    B, L, H, D = x.shape
    freqs = torch.tensor(rotary_frequencies(D), dtype=torch.float64, device=x.device)
    pos = torch.arange(offset, offset + L, dtype=torch.float64, device=x.device)
    ang = pos[:, None] * freqs[None, :]  # (L, D/2)
    cos = ang.cos().to(x.dtype)[None, :, None, :]  # (1, L, 1, D/2)
    sin = ang.sin().to(x.dtype)[None, :, None, :]
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, L, H, D/2) each
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, L, H, D/2, 2)
    return out.reshape(B, L, H, D)
