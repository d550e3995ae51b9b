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
    _flex_module = None  # type: ignore[assignment]


def available() -> bool:
    """Whether this torch has FlexAttention with ``AuxRequest`` (log-sum-exp output)."""
    return _flex_module is not None


@functools.cache
def _compiled() -> Callable:
    """``torch.compile(flex_attention)``, once per process (CUDA only)."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(_flex_eager, dynamic=False)


# Index lists of full width nb instead of the band's W (what the compiled CPU lowering needs; on
# CUDA the narrow ones should do, which benchmarks/gpu_attention_check.py checks). Diagnostics only.
FULL_WIDTH_LISTS = False


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
    tests/model/test_flex_attention.py). Used only by :func:`backward` on a CPU, i.e. under
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
        return out, _lse(aux)
    with warnings.catch_warnings():  # eager on a CPU: the "called without torch.compile" warning
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out, aux = _flex_eager(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                               return_aux=AuxRequest(lse=True))
    return out, _lse(aux)


def _lse(aux) -> Tensor:
    assert aux.lse is not None, "flex_attention returned no log-sum-exp although AuxRequest(lse=True) asked for it"
    return aux.lse


# ----------------------------------------------------------------------------- the block mask
def banded_block_mask(L: int, chunk: int, back: int, fwd: int, blk: int, device: torch.device,
                      mask_mod=None, full_width: bool = False) -> BlockMask:
    """The BlockMask of chunked attention in sorted coordinates, built directly (no mask evaluated).

    Query block ``i`` (positions ``[i blk, (i+1) blk)``) needs the kv blocks holding sorted
    positions ``[i blk - back C, (i+1) blk + fwd C)``: a band, the same for every batch entry and
    head (index lists (1, 1, nb, W), broadcast). ``full_width``: lists of width nb (what the
    compiled CPU lowering asserts); the Triton kernel reads only the first ``num_blocks``.
    ``L`` need not be a multiple of ``blk`` (nb = ceil(L / blk)). The index lists depend on the
    shape only and are kept per process (a few KiB each); ``mask_mod`` is the call's own.
    """
    full_width = full_width or FULL_WIDTH_LISTS
    count, kv_idx, q_count, q_idx = _band_lists(L, chunk, back, fwd, blk, torch.device(device), full_width)
    return BlockMask(seq_lengths=(L, L), kv_num_blocks=count, kv_indices=kv_idx,
                     full_kv_num_blocks=None, full_kv_indices=None, q_num_blocks=q_count,
                     q_indices=q_idx, full_q_num_blocks=None, full_q_indices=None,
                     BLOCK_SIZE=(blk, blk), mask_mod=mask_mod)


@functools.lru_cache(maxsize=64)
def _band_lists(L: int, chunk: int, back: int, fwd: int, blk: int, device: torch.device, full_width: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """kv_num_blocks, kv_indices, q_num_blocks, q_indices of :func:`banded_block_mask` (kept, so
    built outside any inference mode)."""
    with torch.inference_mode(False), torch.no_grad():
        return _band_lists_now(L, chunk, back, fwd, blk, device, full_width)


def _band_lists_now(L: int, chunk: int, back: int, fwd: int, blk: int, device: torch.device, full_width: bool
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
    as_i32 = lambda x: x.to(torch.int32).view(1, 1, *x.shape).contiguous()  # noqa: E731 - (1, 1, nb[, W])
    return as_i32(count), as_i32(kv_idx), as_i32(q_count), as_i32(q_idx)


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

    def hit(r2, b, h, q_idx, kv_idx, dtype):
        diff = us[b, r2, h, q_idx] - us[b, r2, h, kv_idx]
        return ((diff >= lo) & (diff <= hi)).to(dtype)

    def score_mod(score, b, h, q_idx, kv_idx):
        n = hit(0, b, h, q_idx, kv_idx, score.dtype)
        for r2 in range(1, R):
            n = n + hit(r2, b, h, q_idx, kv_idx, score.dtype)
        return score - torch.log(n.clamp(min=1.0))
    return score_mod


# ----------------------------------------------------------------------------- one group of rounds
def _round_groups(lay, G: int, L: int, D: int) -> list[tuple[int, int]]:
    per = max(1, min(lay.rounds, current_policy("cuda").flex_round_elems // max(1, G * L * D)))
    return [(a, min(a + per, lay.rounds)) for a in range(0, lay.rounds, per)]


def _indices(lay, B: int, H: int, L: int, r0: int, r1: int, keep: bool) -> dict:
    """Index tensors of rounds r0..r1 (no autograd): ``rows`` (Rg*G*L,) rows of a flat (B*L*H, D)
    input in each round's sorted order; ``back`` (Rg*B*L*H,) rows of the flat sorted output in
    (round, b, position, h) order; ``back_lse`` (Rg*G*L,) the same for the (round, g, position)
    log-sum-exps; ``us`` (Rg, R, G, L) every round's window key in these rounds' sorted orders.
    ``keep``: store them in ``lay.fused`` for the backward's recomputation (small inputs)."""
    store = lay.fused if lay.fused is not None else {}
    if (r0, r1) in store:
        return store[(r0, r1)]
    G, Rg, R = B * H, r1 - r0, lay.rounds
    dev = lay.buckets.device
    with torch.no_grad():
        perm = lay.perm[r0:r1].long()  # (Rg, G, L)
        g = torch.arange(G, device=dev)
        base = (g // H) * (L * H) + g % H  # (G,) row of (b, 0, h) in the flat (B*L*H, D) input
        rows = (perm * H + base.view(1, G, 1)).view(-1)
        inv = torch.empty_like(perm).scatter_(2, perm, torch.arange(L, device=dev).expand(Rg, G, L))
        flat = inv + torch.arange(Rg * G, device=dev).mul_(L).view(Rg, G, 1)  # (Rg, G, L) sorted-output rows
        back = flat.view(Rg, B, H, L).permute(0, 1, 3, 2).reshape(-1)  # (Rg*B*L*H,)
        us = None
        if R > 1:  # us[b, r2, g, s] = u[r2, g, perm[r0 + b, g, s]]
            us = lay.u.unsqueeze(0).expand(Rg, R, G, L).gather(3, perm.unsqueeze(1).expand(Rg, R, G, L))
        out = {"rows": rows, "back": back, "back_lse": flat.view(-1), "us": us}
    if keep and lay.fused is not None:
        store[(r0, r1)] = out
    return out


def _rounds(q: Tensor, k: Tensor, v: Tensor, lay, scale: float, r0: int, r1: int, keep: bool
            ) -> tuple[Tensor, Tensor]:
    """Rounds r0..r1 of (B, L, H, D) inputs -> out (Rg, B, L, H, D), lse (Rg, G, L), at original
    positions (local attention, in the identity order: Rg = 1, no gathers and no copies)."""
    B, L, H, D = q.shape
    G, Rg = B * H, r1 - r0
    blk = current_policy("cuda").flex_block
    if lay.perm is None:  # (B, H, L, D) views; flex's batch is B, its heads H
        bk = lay.buckets[0].view(B, H, L)
        mask = banded_block_mask(L, lay.chunk, lay.back, lay.fwd, blk, q.device,
                                 mask_mod=_mask_mod(bk, lay, lay.self_fallback))
        out, lse = _flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, mask, scale, blk)
        return out.transpose(1, 2).unsqueeze(0), lse.reshape(1, G, L)  # (1, B, L, H, D), (1, G, L)
    ix = _indices(lay, B, H, L, r0, r1, keep)
    qs, ks, vs = (t.reshape(B * L * H, t.shape[-1]).index_select(0, ix["rows"]).view(Rg, G, L, t.shape[-1])
                  for t in (q, k, v))  # (Rg, G, L, D): flex's batch is the round, its heads G
    score_mod = None if ix["us"] is None else _score_mod(ix["us"], lay.lo, lay.hi)
    mask = banded_block_mask(L, lay.chunk, lay.back, lay.fwd, blk, q.device,
                             mask_mod=_mask_mod(lay.buckets[r0:r1], lay, lay.self_fallback))
    out_s, lse_s = _flex(qs, ks, vs, score_mod, mask, scale, blk)  # sorted coordinates
    Dv = out_s.shape[-1]
    out = out_s.reshape(Rg * G * L, Dv).index_select(0, ix["back"]).view(Rg, B, L, H, Dv)
    lse = lse_s.reshape(Rg * G * L).index_select(0, ix["back_lse"]).view(Rg, G, L)
    return out, lse


def _safe(lse: Tensor) -> Tensor:
    """-inf (a row that sees nothing) -> 0, for use as a subtrahend."""
    return torch.nan_to_num(lse, neginf=0.0)


def _weights(lse_r: Tensor, total: Tensor, B: int, H: int) -> Tensor:
    """exp(lse_r - total) (Rg, G, L) as a (Rg, B, L, H, 1) view: each round's share of the merged softmax."""
    Rg, G, L = lse_r.shape
    w = (lse_r - _safe(total)).exp_()  # 0 for rounds that see nothing
    return w.view(Rg, B, H, L).transpose(2, 3).unsqueeze(-1)


def _reduce(out: Tensor, lse: Tensor, B: int, H: int) -> tuple[Tensor, Tensor]:
    """Merge rounds (dim 0) by their log-sum-exp: (Rg, B, L, H, D), (Rg, G, L) -> (B, L, H, D), (G, L)."""
    if out.shape[0] == 1:
        return out[0], lse[0]
    total = torch.logsumexp(lse, dim=0)  # (G, L); -inf where no round sees anything
    return (out * _weights(lse, total, B, H)).sum(0), total


def _alone(lse: Tensor, B: int, H: int) -> Tensor:
    """(G, L) lse -> (B, L, H, 1) bool: queries that see nothing in any round."""
    G, L = lse.shape
    return torch.isinf(lse).view(B, H, L).transpose(1, 2).unsqueeze(-1)


# ----------------------------------------------------------------------------- entry points
def forward(q: Tensor, k: Optional[Tensor], v: Tensor, lay, scale: float) -> tuple[Tensor, Tensor]:
    """Twin of the reference's forward on (B, L, H, D) tensors: out (B, L, H, D), lse (B*H, L).
    ``k=None``: shared-QK, keys ``F.normalize(q, dim=-1)``."""
    B, L, H, D = q.shape
    q, v = q.detach(), v.detach()  # called without autograd (the Function's forward, or no_grad)
    kk = F.normalize(q, dim=-1) if k is None else k.detach()
    groups = _round_groups(lay, B * H, L, D)
    out, lse = _reduce(*_rounds(q, kk, v, lay, scale, *groups[0], keep=len(groups) == 1), B, H)
    for r0, r1 in groups[1:]:  # merge each later group of rounds with the earlier ones
        o, s = _reduce(*_rounds(q, kk, v, lay, scale, r0, r1, keep=False), B, H)
        out, lse = _reduce(torch.stack([out, o]), torch.stack([lse, s]), B, H)
    if lay.self_fallback:  # nothing visible in any round: the query takes its own value
        out = torch.where(_alone(lse, B, H), v, out)
    return out, lse


def backward(q: Tensor, k: Optional[Tensor], v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, lay,
             scale: float) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """Twin of the reference's backward: (dq, dk, dv), dk None for ``k=None`` (dq then holds the
    keys' gradient through the normalisation)."""
    B, L, H, D = q.shape
    G = B * H
    groups = _round_groups(lay, G, L, D)
    with torch.enable_grad(), (_cpu_backward_allowed() if q.device.type == "cpu" else contextlib.nullcontext()):
        qg = q.detach().requires_grad_(True)
        vg = v.detach().requires_grad_(True)
        kg = None if k is None else k.detach().requires_grad_(True)
        lse = lse.view(G, L)
        for r0, r1 in groups:
            keys = F.normalize(qg, dim=-1) if kg is None else kg
            out_r, lse_r = _rounds(qg, keys, vg, lay, scale, r0, r1, keep=False)  # (Rg, B, L, H, D), (Rg, G, L)
            w = _weights(lse_r.detach(), lse, B, H)  # (Rg, B, L, H, 1)
            d_out = w * dout
            d_lse = (w * (out_r.detach() - out) * dout).sum(-1)  # (Rg, B, L, H)
            torch.autograd.backward([out_r, lse_r], [d_out, d_lse.permute(0, 1, 3, 2).reshape(lse_r.shape)])
            del out_r, lse_r
    dv = vg.grad if vg.grad is not None else torch.zeros_like(vg)
    if lay.self_fallback:  # alone rows took their own value
        dv = dv + dout * _alone(lse, B, H).to(dout.dtype)
    dq = qg.grad if qg.grad is not None else torch.zeros_like(qg)
    dk = None if kg is None else (kg.grad if kg.grad is not None else torch.zeros_like(kg))
    return dq, dk, dv
