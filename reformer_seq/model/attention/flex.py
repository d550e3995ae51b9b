"""The GPU path's attention: chunked (LSH, local, copy) attention as FlexAttention calls.

The same function as :func:`~reformer_seq.model.attention.chunked.chunked_attention_forward`
(Reformer, Kitaev et al., ICLR 2020, section 2: sorted chunks that look back one chunk,
same-bucket keys, self only when nothing else, the ``-log N_ij`` duplicate correction, rounds
merged by their log-sum-exp), computed by FlexAttention (Dong et al., "Flex Attention: A
Programming Model for Generating Optimized Attention Kernels", 2024;
``torch.nn.attention.flex_attention``) instead of Python loops over rounds and blocks, which
issue ~100 kernel launches per (round, block) and leave a GPU waiting on the host
(``shared/design/gpu_attention.md``).

One call attends a group of rounds, the rounds as FlexAttention's batch axis, in each round's
*sorted* coordinates:

* the look-back/look-ahead structure is static in sorted coordinates, so the ``BlockMask`` is a
  band independent of the data, built by hand (:func:`banded_block_mask`; ``create_block_mask``
  would evaluate the mask on all L x L pairs);
* the data-dependent rules are the ``mask_mod``: same bucket (padding has buckets of its own),
  the chunk window, the static band, and self exclusion under the shared-QK rule;
* the duplicate correction is the ``score_mod``: ``score - log N`` with ``N`` the rounds whose
  window test ``lo <= u_r[q] - u_r[k] <= hi`` the pair passes (captured window keys, gathered
  into each round's sorted order);
* outputs and log-sum-exps go back to original positions and are merged across rounds; a query
  that sees nothing in any round takes its own value (shared-QK), as in the reference.

:func:`forward` / :func:`backward` are drop-in twins of the reference's pair (same tensors in
and out), so :class:`~reformer_seq.model.attention.chunked.ChunkedAttentionFunction` keeps its
caching and precision rules. The backward recomputes each group of rounds under autograd and
backpropagates the merged softmax: ``d out_r = w_r dout``, ``d lse_r = w_r <dout, out_r - out>``,
``w_r = exp(lse_r - lse)``; only one group's tensors exist at a time.

On CUDA the call is ``torch.compile(flex_attention)`` (one fused Triton kernel forward, two
backward). Under ``SEQFORMER_KERNEL=gpu`` on a CPU it is eager FlexAttention (dense math, slow,
for tests): torch refuses FlexAttention's backward on a CPU in a front-end guard, and only
this module's backward on a CPU lifts it, for the duration of its own call
(:func:`_cpu_backward_allowed`).

Letters: R rounds (Rg in one call), G = batch x heads, L padded length, D head width,
C chunk, nb blocks of the BlockMask, W kv blocks per q block.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...runtime.policy import current_policy

try:  # torch >= 2.7 with the AuxRequest API; older versions keep the reference path
    from torch.nn.attention import flex_attention as _flex_module
    from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention as _flex_eager
except ImportError:  # pragma: no cover - depends on the installed torch
    _flex_module = None


def available() -> bool:
    """Whether this torch has FlexAttention with ``AuxRequest`` (log-sum-exp output)."""
    return _flex_module is not None


@functools.lru_cache(maxsize=None)
def _compiled() -> Callable:
    """``torch.compile(flex_attention)``, once per process (CUDA only)."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(_flex_eager, dynamic=False)


def _kernel_options(blk: int) -> Optional[dict]:
    """Triton tiles that divide the BlockMask's blocks (the defaults assume 128)."""
    if blk >= 128:
        return None
    return {k: blk for k in ("BLOCK_M", "BLOCK_N", "BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2")}


@contextlib.contextmanager
def _cpu_backward_allowed() -> Iterator[None]:
    """Lift torch's "FlexAttention does not support backward on CPU" guard for this block only.

    The guard (``flex_attention._validate_device``) refuses CPU inputs that require gradients,
    although the eager math backward works on them (equal to the float64 reference to 1e-15, see
    tests/test_flex_attention.py). Used only by :func:`backward` on a CPU, i.e. under
    ``SEQFORMER_KERNEL=gpu`` (the CUDA code path run on a CPU for tests); the module attribute is
    restored on exit. Not thread-safe: another thread's FlexAttention call inside the block
    would skip the guard too.
    """
    original = _flex_module._validate_device

    def validate(query: Tensor, key: Tensor, value: Tensor) -> None:
        if query.device.type != "cpu":
            original(query, key, value)

    _flex_module._validate_device = validate
    try:
        yield
    finally:
        _flex_module._validate_device = original


def _flex(q: Tensor, k: Tensor, v: Tensor, score_mod, block_mask, scale: float, blk: int
          ) -> tuple[Tensor, Tensor]:
    """One FlexAttention call on (Rg, G, L, D) tensors -> out (Rg, G, L, D), lse (Rg, G, L)."""
    if q.device.type == "cuda":
        out, aux = _compiled()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                               kernel_options=_kernel_options(blk), return_aux=AuxRequest(lse=True))
        return out, aux.lse
    with warnings.catch_warnings():  # eager on a CPU: the "called without torch.compile" warning
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out, aux = _flex_eager(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                               return_aux=AuxRequest(lse=True))
    return out, aux.lse


# ----------------------------------------------------------------------------- the block mask
def banded_block_mask(L: int, chunk: int, back: int, fwd: int, blk: int, device: torch.device,
                      mask_mod=None, full_width: bool = False) -> "BlockMask":
    """The BlockMask of chunked attention in sorted coordinates, built directly (no mask evaluated).

    Query block ``i`` (positions ``[i blk, (i+1) blk)``) needs the kv blocks holding sorted
    positions ``[i blk - back C, (i+1) blk + fwd C)``: a band, the same for every batch entry and
    head (index lists (1, 1, nb, W), broadcast). ``full_width``: lists of width nb (what the
    compiled CPU lowering asserts); the Triton kernel reads only the first ``num_blocks``.
    ``L`` need not be a multiple of ``blk`` (nb = ceil(L / blk)).
    """
    nb = -(-L // blk)
    i = torch.arange(nb, device=device)
    first = ((i * blk - back * chunk).clamp(min=0)) // blk  # (nb,) first kv block of q block i
    last = (((i + 1) * blk + fwd * chunk - 1) // blk).clamp(max=nb - 1)  # (nb,) last kv block
    count = last - first + 1
    W = nb if full_width else int(-(-(back * chunk) // blk) + 1 + -(-(fwd * chunk) // blk))
    W = min(W, nb)
    t = torch.arange(W, device=device)
    kv_idx = (first.view(nb, 1) + t).clamp(max=nb - 1)  # (nb, W); entries past count unused
    # transposed lists (the backward's dK/dV walk): q blocks i with first[i] <= j <= last[i]
    j = torch.arange(nb, device=device)
    q_first = torch.searchsorted(last.contiguous(), j)  # first i with last[i] >= j
    q_last = torch.searchsorted(first.contiguous(), j, right=True) - 1  # last i with first[i] <= j
    q_count = q_last - q_first + 1
    q_idx = (q_first.view(nb, 1) + t).clamp(max=nb - 1)  # (nb, W); the band is symmetric in width
    as_i32 = lambda x: x.to(torch.int32).view(1, 1, *x.shape).contiguous()  # noqa: E731
    return BlockMask(seq_lengths=(L, L), kv_num_blocks=as_i32(count), kv_indices=as_i32(kv_idx),
                     full_kv_num_blocks=None, full_kv_indices=None, q_num_blocks=as_i32(q_count),
                     q_indices=as_i32(q_idx), full_q_num_blocks=None, full_q_indices=None,
                     BLOCK_SIZE=(blk, blk), mask_mod=mask_mod)


# ----------------------------------------------------------------------------- the rules
def _mask_mod(bk: Tensor, lay, self_excluded: bool):
    """Visibility in sorted coordinates: same bucket, chunk window, band, and not self."""
    C, back, fwd, lo, hi = lay.chunk, lay.back, lay.fwd, lay.band_lo, lay.band_hi

    def mask_mod(b, h, q_idx, kv_idx):
        d = q_idx - kv_idx
        dc = q_idx // C - kv_idx // C
        ok = (bk[b, h, q_idx] == bk[b, h, kv_idx]) & (dc <= back) & (dc >= -fwd) & (d >= lo) & (d <= hi)
        if self_excluded:
            ok = ok & (d != 0)
        return ok
    return mask_mod


def _score_mod(us: Tensor, lo: int, hi: int):
    """``score - log N``: N = rounds whose window test the pair passes. us (Rg, R, G, L): round
    r2's window key of the position at sorted index s of this call's round b."""
    R = us.shape[1]

    def score_mod(score, b, h, q_idx, kv_idx):
        n = None
        for r2 in range(R):
            diff = us[b, r2, h, q_idx] - us[b, r2, h, kv_idx]
            hit = ((diff >= lo) & (diff <= hi)).to(score.dtype)
            n = hit if n is None else n + hit
        return score - torch.log(n.clamp(min=1.0))
    return score_mod


# ----------------------------------------------------------------------------- one group of rounds
def _round_groups(lay, G: int, L: int, D: int) -> list[tuple[int, int]]:
    per = max(1, min(lay.rounds, current_policy("cuda").flex_round_elems // max(1, G * L * D)))
    return [(a, min(a + per, lay.rounds)) for a in range(0, lay.rounds, per)]


def _rounds(q: Tensor, k: Tensor, v: Tensor, lay, scale: float, r0: int, r1: int) -> tuple[Tensor, Tensor]:
    """Rounds r0..r1 of (G, L, D) inputs -> out (Rg, G, L, D), lse (Rg, G, L), at original positions."""
    G, L, D = q.shape
    Rg = r1 - r0
    blk = current_policy("cuda").flex_block
    bk = lay.buckets[r0:r1]  # (Rg, G, L) sorted buckets
    score_mod = None
    if lay.perm is None:  # identity order (local attention): no gathers
        qs, ks, vs = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)  # (1, G, L, D)
    else:
        with torch.no_grad():
            offs = (torch.arange(Rg * G, device=q.device) % G).mul_(L).view(Rg, G, 1)
            rows = (lay.perm[r0:r1].long() + offs).view(-1)  # (Rg*G*L,) flat rows of (G*L, D)
        qs, ks, vs = (t.reshape(G * L, t.shape[-1]).index_select(0, rows).view(Rg, G, L, t.shape[-1])
                      for t in (q, k, v))  # (Rg, G, L, D) in each round's sorted order
        if lay.rounds > 1:
            with torch.no_grad():  # us[b, r2, g, s] = u[r2, g, perm[r0 + b, g, s]]
                R = lay.rounds
                perm = lay.perm[r0:r1].long().unsqueeze(1).expand(Rg, R, G, L)
                us = lay.u.unsqueeze(0).expand(Rg, R, G, L).gather(3, perm)  # (Rg, R, G, L) int32
            score_mod = _score_mod(us, lay.lo, lay.hi)
    mask = banded_block_mask(L, lay.chunk, lay.back, lay.fwd, blk, q.device,
                             mask_mod=_mask_mod(bk, lay, lay.self_fallback))
    out_s, lse_s = _flex(qs, ks, vs, score_mod, mask, scale, blk)  # sorted coordinates
    if lay.perm is None:
        return out_s, lse_s
    with torch.no_grad():  # inverse order: sorted index of each original position
        inv = torch.empty_like(rows).view(Rg, G, L)
        inv.scatter_(2, lay.perm[r0:r1].long(), torch.arange(L, device=q.device).expand(Rg, G, L))
        back_rows = (inv + _group_offsets(Rg, G, L, q.device)).view(-1)  # rows of the flat sorted output
    out = out_s.reshape(Rg * G * L, D).index_select(0, back_rows).view(Rg, G, L, D)
    lse = lse_s.reshape(Rg * G * L).index_select(0, back_rows).view(Rg, G, L)
    return out, lse


def _group_offsets(Rg: int, G: int, L: int, device: torch.device) -> Tensor:
    """(Rg, G, 1) offsets of each (round, row) in a flattened (Rg*G*L, ...) tensor."""
    return torch.arange(Rg * G, device=device).mul_(L).view(Rg, G, 1)


def _safe(lse: Tensor) -> Tensor:
    return torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)


def _reduce(out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """Merge rounds (dim 0) by their log-sum-exp: (Rg, G, L, D), (Rg, G, L) -> (G, L, D), (G, L)."""
    total = torch.logsumexp(lse, dim=0)  # (G, L); -inf where no round sees anything
    w = (lse - _safe(total)).exp_()  # (Rg, G, L); 0 for rounds that see nothing
    return (out * w.unsqueeze(-1)).sum(0), total


def _to_gld(t: Tensor) -> Tensor:
    """(B, L, H, D) -> (B*H, L, D)."""
    B, L, H, D = t.shape
    return t.permute(0, 2, 1, 3).reshape(B * H, L, D)


def _from_gld(t: Tensor, B: int, H: int) -> Tensor:
    """(B*H, L, D) -> (B, L, H, D)."""
    G, L, D = t.shape
    return t.view(B, H, L, D).permute(0, 2, 1, 3)


# ----------------------------------------------------------------------------- entry points
def forward(q: Tensor, k: Optional[Tensor], v: Tensor, lay, scale: float) -> tuple[Tensor, Tensor]:
    """Twin of the reference's forward on (B, L, H, D) tensors: out (B, L, H, D), lse (B*H, L).
    ``k=None``: shared-QK, keys ``F.normalize(q, dim=-1)``."""
    B, L, H, D = q.shape
    qg, vg = _to_gld(q), _to_gld(v)
    kg = F.normalize(qg, dim=-1) if k is None else _to_gld(k)
    out = lse = None
    for r0, r1 in _round_groups(lay, B * H, L, D):
        o, s = _reduce(*_rounds(qg, kg, vg, lay, scale, r0, r1))
        if out is None:
            out, lse = o, s
        else:  # merge with the earlier groups
            out, lse = _reduce(torch.stack([out, o]), torch.stack([lse, s]))
    if lay.self_fallback:  # nothing visible in any round: the query takes its own value
        out = torch.where(torch.isinf(lse).unsqueeze(-1), vg, out)
    return _from_gld(out, B, H), lse


def backward(q: Tensor, k: Optional[Tensor], v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, lay,
             scale: float) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """Twin of the reference's backward: (dq, dk, dv), dk None for ``k=None`` (dq then holds the
    keys' gradient through the normalisation)."""
    B, L, H, D = q.shape
    G = B * H
    with torch.enable_grad(), (_cpu_backward_allowed() if q.device.type == "cpu" else contextlib.nullcontext()):
        qg = _to_gld(q).detach().requires_grad_(True)
        vg = _to_gld(v).detach().requires_grad_(True)
        kg = None if k is None else _to_gld(k).detach().requires_grad_(True)
        og, dog = _to_gld(out).detach(), _to_gld(dout)
        base = _safe(lse.view(G, L))
        for r0, r1 in _round_groups(lay, G, L, D):
            keys = F.normalize(qg, dim=-1) if kg is None else kg
            out_r, lse_r = _rounds(qg, keys, vg, lay, scale, r0, r1)  # (Rg, G, L, D), (Rg, G, L)
            w = (lse_r.detach() - base).exp_()  # (Rg, G, L) the merged softmax's share of each round
            d_out = w.unsqueeze(-1) * dog
            d_lse = w * ((out_r.detach() - og) * dog).sum(-1)
            torch.autograd.backward([out_r, lse_r], [d_out, d_lse])
            del out_r, lse_r
    dv = vg.grad
    if lay.self_fallback:  # alone rows took their own value
        dv = dv + dog * torch.isinf(lse.view(G, L)).unsqueeze(-1).to(dog.dtype)
    dq = qg.grad if qg.grad is not None else torch.zeros_like(qg)
    dk = None if kg is None else (kg.grad if kg.grad is not None else torch.zeros_like(kg))
    return (_from_gld(dq, B, H), None if dk is None else _from_gld(dk, B, H), _from_gld(dv, B, H))
