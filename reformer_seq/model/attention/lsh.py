"""LSH attention's hashing and sorting (Reformer, Kitaev et al., ICLR 2020, section 2).

Angular LSH: a vector's bucket is the argmax over ``[xR; -xR]`` for a random rotation ``R``.
The paper draws one rotation with ``n_buckets / 2`` columns, so hashing costs
``O(L * n_buckets)`` and, with ``n_buckets ~ L / bucket_size``, grows quadratically in L.
We factorise instead: the bucket code concatenates ``F`` independent small hashes, each an
argmax over ``FACTOR`` directions (3 bits each); a sequence that needs ``2**k`` buckets takes
the top ``k`` bits. Cost per token is ``D * F * FACTOR / 2`` with ``F = ceil(k / 3)``: it grows
with the logarithm of the bucket count, not with L. Each factor is an angular LSH in its own
right, and their product (an AND of hashes) is again locality sensitive.

Every round sorts positions by (bucket, position). Padding (internal padding to a multiple of
the chunk, and positions the caller masks out) gets buckets past every real one, one bucket
per padded position, so padded positions sort after all real ones and meet nobody but
themselves: outputs at real positions do not depend on the amount of padding.

Window rule per round (see :class:`~reformer_seq.model.attention.chunked.Layout`); ``s`` is the
sorted index:

* causal: query ``i`` sees the (at most ``C``) nearest earlier keys of its own bucket in the
  round's sorted order (band ``0 <= s_q - s_k <= C``). Between two same-bucket positions the
  sorted order holds only same-bucket positions that lie between them, so later tokens can
  never move a key into or out of an earlier query's window: the attention is strictly
  causal. Window key ``u = s + (C + 1) * bucket`` with ``0 <= u_q - u_k <= C``.
* bidirectional: the paper's rule, own chunk and the previous one, same bucket: window key
  ``u = s // C + 2 * bucket`` with ``0 <= u_q - u_k <= 1``.

Letters: B batch, H heads, L padded length, D head width, R rounds, G = B * H.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ...runtime.policy import current_policy, gpu_path

from . import kernel as kernels
from .chunked import Layout

FACTOR = 8  # directions (with their negatives) per hash factor: 3 bits of bucket code
FACTOR_BITS = 3


def bucket_bits(real_len: Tensor, bucket_size: int, n_buckets: Optional[int]) -> Tensor:
    """log2 of the bucket count per sequence, (B,) long.

    With ``n_buckets`` None it is the power of two nearest to ``real_len / bucket_size``
    (at least 2 buckets), so a bucket holds about one chunk on average.
    """
    if n_buckets is not None:
        return torch.full_like(real_len, int(math.log2(n_buckets)))
    ratio = real_len.clamp(min=1).double() / bucket_size
    return torch.log2(ratio).round().clamp(min=1).long()


def hash_rotations(heads: int, dim_head: int, n_hashes: int, n_factors: int, *, device: torch.device,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    """Random rotations (H, D, F * R * FACTOR/2), factor-major; drawn factor by factor so a
    seeded generator gives the same first factors whatever F is."""
    half = FACTOR // 2
    parts = [torch.randn(heads, dim_head, n_hashes * half, device=device, generator=generator)
             for _ in range(n_factors)]
    return torch.cat(parts, dim=-1) if parts else torch.zeros(heads, dim_head, 0, device=device)


def layer_rotations(heads: int, dim_head: int, n_hashes: int, n_factors: int, device: torch.device,
                    training: bool, seed: int) -> Tensor:
    """A layer's rotations for one call: fresh random ones in training; in evaluation the same
    ones every call and on every device (drawn on the CPU from ``seed`` and moved: a CUDA
    generator with the same seed gives other numbers, and a checkpoint must score alike on both)."""
    if training:
        return hash_rotations(heads, dim_head, n_hashes, n_factors, device=device)
    gen = torch.Generator().manual_seed(seed)
    return hash_rotations(heads, dim_head, n_hashes, n_factors, device=torch.device("cpu"), generator=gen).to(device)


def hash_codes(qk: Tensor, rotations: Tensor, n_hashes: int) -> Tensor:
    """Bucket codes of every position in every round: qk (B, H, L, D) -> (R, B, H, L) int64.

    Code bits: factor 0 is most significant, ``FACTOR_BITS`` bits per factor.
    """
    B, H, L, D = qk.shape
    half = FACTOR // 2
    F = rotations.shape[-1] // (n_hashes * half)
    codes = torch.zeros(n_hashes, B, H, L, dtype=torch.long, device=qk.device)
    if F == 0:
        return codes
    rot = rotations.to(qk.dtype)
    compiled = kernels.usable(qk)
    rows = current_policy(qk.device).hash_row_block  # positions hashed at a time (bounds the projection temporary)
    for a in range(0, L, rows):
        x = qk[:, :, a:a + rows]  # (B, H, l, D)
        l = x.shape[2]  # noqa: E741 - the legend's l, a block of positions
        proj = torch.matmul(x, rot)  # (B, H, l, F*R*half)
        if compiled:
            code = kernels.lsh_codes(proj.view(-1, F * n_hashes * half), F, n_hashes, half)  # (R, B*H*l)
            codes[:, :, :, a:a + l] = code.view(n_hashes, B, H, l)
            continue
        proj = proj.view(B, H, l, F, n_hashes, half)
        idx = torch.cat([proj, -proj], dim=-1).argmax(dim=-1)  # (B, H, l, F, R) in [0, FACTOR)
        weights = FACTOR ** torch.arange(F - 1, -1, -1, device=qk.device)  # (F,)
        code = (idx * weights.view(F, 1)).sum(dim=-2)  # (B, H, l, R)
        codes[:, :, :, a:a + l] = code.permute(3, 0, 1, 2)
    return codes


def lsh_layout(qk: Tensor, real: Tensor, bits: Tensor, rotations: Tensor, n_hashes: int,
               bucket_size: int, causal: bool) -> Layout:
    """Hash, sort and describe the windows of one LSH layer.

    qk: (B, H, L, D) shared query/key vectors, L a multiple of bucket_size.
    real: (B, L) bool, False at padded positions. bits: (B,) log2 bucket count per sequence.
    On the GPU path the padding buckets are applied whatever ``real`` holds (no host sync to ask
    whether it is all True; the result is the same).
    """
    B, H, L, D = qk.shape
    R, C = n_hashes, bucket_size
    total_bits = (rotations.shape[-1] // (n_hashes * (FACTOR // 2))) * FACTOR_BITS
    buckets = hash_codes(qk, rotations, n_hashes)  # (R, B, H, L) codes
    buckets >>= (total_bits - bits).clamp(min=0).view(1, B, 1, 1)  # top bits: [0, 2**bits)
    pos = torch.arange(L, device=qk.device)
    if gpu_path(qk.device) or not bool(real.all()):  # one bucket per padded slot, after every real one
        pad_bucket = (1 << bits).view(1, B, 1, 1) + pos.view(1, 1, 1, L)
        buckets = torch.where(real.view(1, B, 1, L), buckets, pad_bucket)
    buckets = buckets.reshape(R, B * H, L)  # (R, G, L)
    if kernels.usable(qk):  # the same sort as below, a linear-time counting sort in C
        n_real = (1 << bits).repeat_interleave(H)  # (G,) bucket count of each row
        perm, sorted_buckets, u = kernels.lsh_sort(buckets, n_real, C, causal)
        band, lo, hi = ((0, C), 0, C) if causal else ((-2 * C, 2 * C), 0, 1)
        return Layout(perm=perm, buckets=sorted_buckets, band_lo=band[0], band_hi=band[1], u=u, lo=lo, hi=hi,
                      chunk=C, back=1, fwd=0, self_fallback=True)
    sorted_buckets, perm = torch.sort(buckets, dim=-1, stable=True)  # by (bucket, position)
    s = pos.view(1, 1, L)
    if causal:
        u_sorted = s + (C + 1) * sorted_buckets
        band, lo, hi = (0, C), 0, C
    else:
        u_sorted = torch.div(s, C, rounding_mode="floor") + 2 * sorted_buckets
        band, lo, hi = (-2 * C, 2 * C), 0, 1  # the whole window: own chunk and the previous one
    u = torch.empty(R, B * H, L, dtype=torch.int32, device=qk.device)
    u.scatter_(-1, perm, u_sorted.to(torch.int32))  # back to original positions
    return Layout(perm=perm.to(torch.int32), buckets=sorted_buckets.to(torch.int32), band_lo=band[0],
                  band_hi=band[1], u=u, lo=lo, hi=hi, chunk=C, back=1, fwd=0, self_fallback=True,
                  fused={} if gpu_path(qk.device) else None)


def n_hash_factors(bits: Tensor, bound: Optional[int] = None) -> int:
    """Hash factors needed for the largest bucket count in the batch.

    ``bound``: a log2 bucket count known on the host to be at least every entry of ``bits`` (see
    :func:`bits_bound`). On the GPU path it is used instead of reading ``bits`` back (a host
    sync); equal to the maximum without a mask. More factors than needed leave the buckets
    unchanged (the codes keep their top bits, and factors are drawn one after another)."""
    if bound is not None and gpu_path(bits.device):
        return int(math.ceil(bound / FACTOR_BITS))
    return int(math.ceil(int(bits.max()) / FACTOR_BITS)) if bits.numel() else 0


def bits_bound(length: int, bucket_size: int, n_buckets: Optional[int]) -> int:
    """:func:`bucket_bits` of a sequence of ``length`` real tokens, on the host: an upper bound
    for every sequence of that padded length (bucket_bits grows with the real length)."""
    if n_buckets is not None:
        return int(math.log2(n_buckets))
    return max(1, round(math.log2(max(length, 1) / bucket_size)))
