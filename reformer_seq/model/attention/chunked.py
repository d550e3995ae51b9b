"""Chunked attention over a permuted sequence: the kernel behind LSH and local attention.

Reformer (Kitaev et al., ICLR 2020), section 2: after hashing, each round's sequence is sorted
by bucket, cut into chunks of ``C`` positions, and every chunk attends to its own chunk and the
one before it ("no wrap-around": the first chunk of a round looks back at nothing). Rounds are
combined with their log-sum-exp weights, which makes the result one softmax over all
(round, key) entries; the paper's correction subtracts ``log N_ij`` from a pair that meets in
``N_ij`` rounds, so the combined output is exactly softmax attention over the union of the
rounds' key sets. With shared query/key projections a query would always prefer itself, so
it attends to itself only when it has nothing else (section 2): self is masked in every round,
and a query left with no key in any round takes its own value, exactly.

Which keys of its window a query sees in its own round: those in its bucket whose distance
in the sorted order lies in a static band (``band_lo <= s_q - s_k <= band_hi``). To count the
rounds a pair meets in, each round also gives every position a *window key* ``u``: key ``j``
is visible to query ``i`` in round ``r`` iff ``lo <= u_r[i] - u_r[j] <= hi``. The callers encode
their rules (see :mod:`.lsh` and :mod:`.local`).

The autograd Function computes in float32 (float64 for float64 inputs) one (round, block of chunks) at a time, in
forward and backward alike (the backward recomputes logits, as FlashAttention does), so temporaries
are bounded by ``max_block_elems`` (default: the execution policy's ``attention_block_elems``)
whatever the length: memory grows linearly with L.

Letters: G = batch x heads (flattened), L = padded length (multiple of C), D = head width,
R = rounds, C = chunk length, n = chunks in a block, K = keys per window = (back+1+fwd) * C.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...runtime.policy import current_policy, gpu_path

SELF_VALUE = -5e4  # additive self logit of dense shared-QK attention (full_attention)
_FAR = -(2 ** 30)  # window key of out-of-range slots: fails every window test


@dataclass
class Layout:
    """How a (G, L) sequence is permuted and windowed, per round.

    perm: (R, G, L) int32, sorted index -> original position; None means identity (R = 1).
    buckets: (R, G, L) int32 bucket of each position in each round's sorted order (padding has
        buckets of its own, so it meets nothing but itself).
    band_lo, band_hi: a query sees same-bucket keys with ``band_lo <= s_q - s_k <= band_hi``.
    u: (R, G, L) int32 window key of each *original* position in each round; only used to count
        the rounds a pair meets in (R > 1), by the test ``lo <= u_q - u_k <= hi``.
    chunk: C. back, fwd: chunks looked at before / after a query's own chunk.
    self_fallback: shared-QK rule (self only when nothing else); False: self is a key like any other.
    """

    perm: Optional[Tensor]
    buckets: Tensor
    band_lo: int
    band_hi: int
    u: Optional[Tensor]
    lo: int
    hi: int
    chunk: int
    back: int = 1
    fwd: int = 0
    self_fallback: bool = True
    # the GPU path's index tensors of this layout (model/attention/flex.py), kept from the forward
    # pass for the reversible backward; a dict to fill, or None (not kept)
    fused: Optional[dict] = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def rounds(self) -> int:
        return self.buckets.shape[0]

    @property
    def window(self) -> int:
        return (self.back + 1 + self.fwd) * self.chunk

    def select_heads(self, heads: slice, n_heads: int) -> Layout:
        """The layout of heads ``heads`` only (rows g = b * n_heads + h of every tensor)."""
        G = self.buckets.shape[1]
        if heads.start == 0 and heads.stop == n_heads:
            return self
        B = G // n_heads
        idx = None if B == 1 else (torch.arange(B, device=self.buckets.device).view(B, 1) * n_heads
                                   + torch.arange(heads.start, heads.stop, device=self.buckets.device)).reshape(-1)

        def pick(t: Tensor) -> Tensor:
            return t[:, heads] if idx is None else t.index_select(1, idx)  # B == 1: a view

        return dataclasses.replace(self, perm=None if self.perm is None else pick(self.perm),
                                   buckets=pick(self.buckets), u=None if self.u is None else pick(self.u),
                                   fused=None if self.fused is None else {})


class _Block:
    """Index bookkeeping of one (round, block of chunks): which rows are queries and keys."""

    def __init__(self, lay: Layout, r: int, c0: int, c1: int, G: int, L: int, device: torch.device):
        C = lay.chunk
        self.n = c1 - c0
        self.q0, self.q1 = c0 * C, c1 * C
        # key slots cover sorted indices [k0, k1); those outside [0, L) are padding slots
        self.k0, self.k1 = (c0 - lay.back) * C, (c1 + lay.fwd) * C
        self.lo_pad = max(0, -self.k0)
        self.hi_pad = max(0, self.k1 - L)
        self.r = r
        offs = torch.arange(G, device=device).mul_(L).unsqueeze(1)  # (G, 1)
        ks, ke = self.k0 + self.lo_pad, self.k1 - self.hi_pad  # in-range key sorted indices
        if lay.perm is None:
            self.q_rows = (offs + torch.arange(self.q0, self.q1, device=device)).reshape(-1)
            self.k_rows = (offs + torch.arange(ks, ke, device=device)).reshape(-1)
            self.q_pos = None
            self.k_pos = None
        else:
            self.q_pos = lay.perm[r, :, self.q0:self.q1].long()  # (G, nC) original positions
            self.k_pos = lay.perm[r, :, ks:ke].long()
            self.q_rows = (self.q_pos + offs).reshape(-1)
            self.k_rows = (self.k_pos + offs).reshape(-1)

    def _pad_keys(self, x: Tensor, value: float) -> Tensor:
        """Pad the key axis (dim 1) of a (G, k, ...) tensor with slots outside [0, L)."""
        if not (self.lo_pad or self.hi_pad):
            return x
        shape_lo = (x.shape[0], self.lo_pad) + tuple(x.shape[2:])
        shape_hi = (x.shape[0], self.hi_pad) + tuple(x.shape[2:])
        return torch.cat([x.new_full(shape_lo, value), x, x.new_full(shape_hi, value)], dim=1)

    def windows(self, x: Tensor, lay: Layout, value: float) -> Tensor:
        """(G, keys-in-range, ...) -> (G, n, K, ...): each chunk's look-back/own/look-ahead keys."""
        x = self._pad_keys(x, value)
        G, C = x.shape[0], lay.chunk
        x = x.reshape(G, self.n + lay.back + lay.fwd, C, *x.shape[2:])  # (G, n+back+fwd, C, ...)
        parts = [x[:, t:t + self.n] for t in range(lay.back + 1 + lay.fwd)]
        return torch.cat(parts, dim=2)  # (G, n, K, ...)

    def fold(self, xw: Tensor, lay: Layout) -> Tensor:
        """Inverse of ``windows`` for gradients: (G, n, K, D) -> (G, keys-in-range, D), summed."""
        G, n, K, D = xw.shape
        C = lay.chunk
        buf = xw.new_zeros(G, n + lay.back + lay.fwd, C, D)
        for t in range(lay.back + 1 + lay.fwd):
            buf[:, t:t + n] += xw[:, :, t * C:(t + 1) * C]
        buf = buf.reshape(G, -1, D)  # (G, (n+back+fwd)*C, D)
        return buf[:, self.lo_pad:buf.shape[1] - self.hi_pad]


def _gather(x2d: Tensor, rows: Tensor, G: int) -> Tensor:
    """Rows of a flattened (G*L, D) tensor -> (G, m, D)."""
    return x2d.index_select(0, rows).view(G, -1, x2d.shape[-1])


def _static_masks(lay: Layout, device: torch.device) -> tuple[Tensor, Tensor]:
    """(C, K) bool masks of window slots: the sorted-order band, and each query's own slot."""
    C = lay.chunk
    a = torch.arange(C, device=device).view(C, 1) + lay.back * C  # query slot in the window
    b = torch.arange(lay.window, device=device).view(1, -1)
    d = a - b  # s_q - s_k
    return (d >= lay.band_lo) & (d <= lay.band_hi), d == 0


def _logits(q: Tensor, kw: Tensor, blk: _Block, lay: Layout, scale: float, masks: tuple[Tensor, Tensor]) -> Tensor:
    """Masked, duplicate-corrected logits of one block: (G, n, C, D) x (G, n, K, D) -> (G, n, C, K)."""
    G, n, C, _ = q.shape
    band, self_slots = masks
    dots = torch.matmul(q, kw.transpose(-1, -2)).mul_(scale)  # (G, n, C, K)
    r0 = blk.r
    bq = lay.buckets[r0, :, blk.q0:blk.q1].reshape(G, n, C, 1)
    bk = blk.windows(lay.buckets[r0, :, blk.k0 + blk.lo_pad:blk.k1 - blk.hi_pad].unsqueeze(-1), lay, -1)
    valid = (bq == bk.view(G, n, 1, lay.window)) & band  # same bucket, inside the band

    if lay.rounds > 1:  # section 2: subtract log N_ij, N_ij = rounds in which j is in i's window
        # a layout of several rounds carries u and a permutation
        assert lay.u is not None and blk.q_pos is not None and blk.k_pos is not None
        count = valid.to(torch.uint8)
        for r in range(lay.rounds):
            if r == r0:
                continue
            uq = lay.u[r].gather(1, blk.q_pos).view(G, n, C, 1)  # round r's keys, in round r0's order
            uk = blk.windows(lay.u[r].gather(1, blk.k_pos).unsqueeze(-1), lay, _FAR).view(G, n, 1, lay.window)
            diff = uq - uk  # (G, n, C, K)
            count += (diff >= lay.lo) & (diff <= lay.hi)
        dots.sub_(count.to(dots.dtype).log_())
    dots.masked_fill_(~valid, float("-inf"))
    if lay.self_fallback:
        dots.masked_fill_(self_slots, float("-inf"))
    return dots


def _safe(lse: Tensor) -> Tensor:
    """lse with -inf (a row that sees nothing) replaced by 0, for use as a subtrahend."""
    return lse.masked_fill(torch.isinf(lse), 0.0)


def _blocks(lay: Layout, G: int, L: int, max_block_elems: Optional[int]):
    C = lay.chunk
    n_chunks = L // C
    per_chunk = G * C * lay.window
    max_block_elems = max_block_elems or current_policy(lay.buckets.device).attention_block_elems
    step = max(1, min(n_chunks, max_block_elems // per_chunk))
    for c0 in range(0, n_chunks, step):
        yield c0, min(n_chunks, c0 + step)


def _block_inputs(blk: _Block, lay: Layout, q2: Tensor, k2: Tensor, v2: Tensor, G: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """A block's queries (G, n, C, D) and its windows of keys and values (G, n, K, D)."""
    D = q2.shape[-1]
    qs = _gather(q2, blk.q_rows, G).view(G, blk.n, lay.chunk, D)
    kw = blk.windows(_gather(k2, blk.k_rows, G), lay, 0.0)
    vw = blk.windows(_gather(v2, blk.k_rows, G), lay, 0.0)
    return qs, kw, vw


def chunked_attention_forward(q: Tensor, k: Tensor, v: Tensor, lay: Layout, scale: float,
                              max_block_elems: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Attention of (G, L, D) float32 inputs under ``lay``; returns out (G, L, D) and lse (G, L)."""
    G, L, D = q.shape
    q2, k2, v2 = q.reshape(G * L, D), k.reshape(G * L, D), v.reshape(G * L, D)
    out = torch.zeros(G * L, D, dtype=q.dtype, device=q.device)
    lse = torch.full((G * L,), float("-inf"), dtype=q.dtype, device=q.device)
    masks = _static_masks(lay, q.device)
    for r in range(lay.rounds):
        for c0, c1 in _blocks(lay, G, L, max_block_elems):
            blk = _Block(lay, r, c0, c1, G, L, q.device)
            qs, kw, vw = _block_inputs(blk, lay, q2, k2, v2, G)
            logits = _logits(qs, kw, blk, lay, scale, masks)
            blse = torch.logsumexp(logits, dim=-1)  # (G, n, C); -inf where nothing is visible
            p = logits.sub_(_safe(blse).unsqueeze(-1)).exp_()
            bout = torch.matmul(p, vw).view(-1, D)  # (G*n*C, D)
            blse = blse.view(-1)
            if r == 0:
                out.index_copy_(0, blk.q_rows, bout)
                lse.index_copy_(0, blk.q_rows, blse)
            else:  # merge with earlier rounds by their log-sum-exp weights
                prev_out, prev_lse = out.index_select(0, blk.q_rows), lse.index_select(0, blk.q_rows)
                new_lse = torch.logaddexp(prev_lse, blse)
                base = _safe(new_lse)
                merged = prev_out * (prev_lse - base).exp_().unsqueeze(-1) \
                    + bout * (blse - base).exp_().unsqueeze(-1)
                out.index_copy_(0, blk.q_rows, merged)
                lse.index_copy_(0, blk.q_rows, new_lse)
    if lay.self_fallback:  # nothing visible in any round: the query takes its own value (no host sync)
        out = torch.where(torch.isinf(lse).unsqueeze(-1), v2, out)
    return out.view(G, L, D), lse.view(G, L)


def chunked_attention_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                               lay: Layout, scale: float, max_block_elems: Optional[int] = None
                               ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of ``chunked_attention_forward``, recomputing logits block by block."""
    G, L, D = q.shape
    q2, k2, v2, do2 = (t.reshape(G * L, D) for t in (q, k, v, dout))
    lse1 = lse.reshape(G * L)
    delta = (dout * out).sum(-1).reshape(G * L)  # (G*L,) rowsum(dO * O)
    dq = torch.zeros_like(q2)
    dk = torch.zeros_like(k2)
    dv = torch.zeros_like(v2)
    masks = _static_masks(lay, q.device)
    for r in range(lay.rounds):
        for c0, c1 in _blocks(lay, G, L, max_block_elems):
            blk = _Block(lay, r, c0, c1, G, L, q.device)
            n, C = blk.n, lay.chunk
            qs, kw, vw = _block_inputs(blk, lay, q2, k2, v2, G)
            dos = _gather(do2, blk.q_rows, G).view(G, n, C, D)
            blse = _safe(lse1.index_select(0, blk.q_rows)).view(G, n, C, 1)
            bdelta = delta.index_select(0, blk.q_rows).view(G, n, C, 1)
            p = _logits(qs, kw, blk, lay, scale, masks).sub_(blse).exp_()  # (G, n, C, K)
            dvw = torch.matmul(p.transpose(-1, -2), dos)  # (G, n, K, D)
            ds = torch.matmul(dos, vw.transpose(-1, -2)).sub_(bdelta).mul_(p).mul_(scale)  # (G, n, C, K)
            dq.index_add_(0, blk.q_rows, torch.matmul(ds, kw).view(-1, D))
            dkw = torch.matmul(ds.transpose(-1, -2), qs)  # (G, n, K, D)
            dk.index_add_(0, blk.k_rows, blk.fold(dkw, lay).reshape(-1, D))
            dv.index_add_(0, blk.k_rows, blk.fold(dvw, lay).reshape(-1, D))
    if lay.self_fallback:  # alone rows took their own value (a product, not a boolean index: no host sync)
        dv += do2 * torch.isinf(lse1).unsqueeze(-1).to(do2.dtype)
    return dq.view(G, L, D), dk.view(G, L, D), dv.view(G, L, D)


def _to_gld(t: Tensor) -> Tensor:
    """(B, L, H, D) -> (B*H, L, D), the reference path's layout."""
    B, L, H, D = t.shape
    return t.permute(0, 2, 1, 3).reshape(B * H, L, D)


def _from_gld(t: Tensor, B: int, H: int) -> Tensor:
    """(B*H, L, D) -> (B, L, H, D)."""
    G, L, D = t.shape
    return t.view(B, H, L, D).permute(0, 2, 1, 3)


def _normalized(q: Tensor) -> Tensor:
    return F.normalize(q, dim=-1)


def _fused(q: Tensor) -> bool:
    """Whether the GPU path's fused backend (:mod:`.flex`) takes this call: CUDA tensors or
    ``SEQFORMER_KERNEL=gpu``, and a torch with FlexAttention (``SEQFORMER_KERNEL=torch``: the
    reference, on CUDA too)."""
    from . import flex
    from . import kernel as kernels

    return gpu_path(q.device) and flex.available() and kernels.mode() != "torch"


def _forward(q: Tensor, k: Optional[Tensor], v: Tensor, lay: Layout, scale: float, max_block_elems: int
             ) -> tuple[Tensor, Tensor]:
    """(B, L, H, D) inputs -> out (B, L, H, D), lse (B*H, L): the fused backend on the GPU path,
    the compiled kernel when it takes these tensors (CPU float32), else the reference.
    ``k=None``: keys are the normalised queries."""
    from . import kernel as kernels

    if _fused(q):
        from . import flex

        return flex.forward(q, k, v, lay, scale)
    if kernels.usable(q, v):
        return kernels.forward(q, k, v, lay, scale)
    B, _, H, _ = q.shape
    k = _normalized(q) if k is None else k
    out, lse = chunked_attention_forward(_to_gld(q), _to_gld(k), _to_gld(v), lay, scale, max_block_elems)
    return _from_gld(out, B, H), lse


def _backward(q, k, v, out, lse, dout, lay: Layout, scale: float, max_block_elems: int):
    from . import kernel as kernels

    if _fused(q):
        from . import flex

        return flex.backward(q, k, v, out, lse, dout, lay, scale)
    if kernels.usable(q, v, dout):
        return kernels.backward(q, k, v, out, lse, dout, lay, scale)
    B, _, H, _ = q.shape
    kk = _normalized(q) if k is None else k
    dq, dk, dv = (_from_gld(g, B, H) for g in chunked_attention_backward(
        _to_gld(q), _to_gld(kk), _to_gld(v), _to_gld(out), lse, _to_gld(dout), lay, scale, max_block_elems))
    if k is None:  # chain the keys' gradient through the normalisation into dq
        with torch.enable_grad():
            qq = q.detach().requires_grad_(True)
            (dk_q,) = torch.autograd.grad(_normalized(qq), qq, dk)
        return dq + dk_q, None, dv
    return dq, dk, dv


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types (softmax statistics need it), float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


# The forward pass's outputs are kept for the reversible backward's recomputation when they are
# this small (elements of one layer's attention output); above it they are recomputed.


class ChunkedAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves only q, k, v, out and lse; the backward recomputes logits."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, lay: Layout, scale: float,
                max_block_elems: int, cached: Optional[tuple[Tensor, Tensor]]) -> Tensor:
        dtype = q.dtype
        qf, kf, vf = (None if t is None else t.to(compute_dtype(dtype)) for t in (q, k, v))
        if cached is not None:  # the forward pass already computed this (reversible recomputation)
            out, lse = cached
        else:
            with torch.autocast(q.device.type, enabled=False):
                out, lse = _forward(qf, kf, vf, lay, scale, max_block_elems)
        ctx.save_for_backward(qf, kf, vf, out, lse)
        ctx.lay, ctx.scale, ctx.block = lay, scale, max_block_elems
        ctx.dtypes = (q.dtype, None if k is None else k.dtype, v.dtype)
        return out.to(dtype)

    @staticmethod
    def backward(ctx, dout: Tensor):
        qf, kf, vf, out, lse = ctx.saved_tensors
        with torch.autocast(qf.device.type, enabled=False):
            dq, dk, dv = _backward(qf, kf, vf, out, lse, dout.to(qf.dtype), ctx.lay, ctx.scale, ctx.block)
        tq, tk, tv = ctx.dtypes
        return dq.to(tq), None if dk is None else dk.to(tk), dv.to(tv), None, None, None, None


def chunked_attention(q: Tensor, k: Optional[Tensor], v: Tensor, lay: Layout, scale: Optional[float] = None,
                      cache: Optional[dict] = None, max_block_elems: Optional[int] = None) -> Tensor:
    """Windowed attention under ``lay`` of (B, L, H, D) queries/keys/values -> (B, L, H, D).

    ``k=None`` means shared-QK keys, ``F.normalize(q, dim=-1)`` (the compiled kernel forms them
    on the fly, saving a tensor and its gradient). L must be a multiple of ``lay.chunk``.
    Differentiable in q, k and v. ``cache`` (a dict shared
    by a reversible block's forward pass and its recomputation) keeps the forward's output so
    the recomputation does not attend again.
    """
    max_block_elems = max_block_elems or current_policy(q.device).attention_block_elems
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if q.shape[1] % lay.chunk:
        raise ValueError(f"length {q.shape[1]} is not a multiple of the chunk length {lay.chunk}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v)):
        cached = cache.pop("attn_out", None) if cache is not None else None
        return ChunkedAttentionFunction.apply(q, k, v, lay, scale, max_block_elems, cached)
    with torch.autocast(q.device.type, enabled=False):
        cd = compute_dtype(q.dtype)
        out, lse = _forward(q.to(cd), None if k is None else k.to(cd), v.to(cd), lay, scale, max_block_elems)
    if cache is not None and out.numel() <= current_policy(q.device).attention_cache_elems:
        cache["attn_out"] = (out, lse)
    return out.to(q.dtype)
