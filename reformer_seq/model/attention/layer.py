"""Multi-head self-attention layer: projections, pre-norm, and the choice of kernel.

One layer of kind ``lsh`` (Reformer section 2), ``full`` (exact) or ``local`` (sliding window).
``lsh`` and ``full`` share query and key (``to_qk``; keys are unit-normalised queries), so an
LSH layer's weights run unchanged with exact attention. ``local`` has its own key projection
and lets a position attend to itself.

Heads are independent until the output projection, so for long inputs they run a group at a
time (the output is the sum of the groups' shares): in the reversible backward only one
group's projections, attention output and gradients exist at once (``forward_backward``).

Letters: B batch, L length, Lp padded length, H heads, D head width, G = B * H.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...runtime.policy import current_policy
from .chunked import chunked_attention
from .exact import full_attention
from .local import local_layout
from ..local_features import rotary
from .lsh import bits_bound, bucket_bits, layer_rotations, lsh_layout, n_hash_factors


# Above this many elements per (B, Lp, heads, D) tensor, heads are attended a group at a time
# (64 MB of float32: at 1M tokens, one head of width 16).


class SelfAttention(nn.Module):
    """Pre-norm self-attention: (B, L, dim) -> (B, L, dim)."""

    def __init__(self, dim: int, heads: int, dim_head: int, kind: str = "lsh", causal: bool = True,
                 bucket_size: int = 16, n_hashes: int = 4, n_buckets: Optional[int] = None,
                 local_window: int = 64, dropout: float = 0.0, hash_seed: int = 0, rope: bool = False):
        super().__init__()
        self.rope = rope  # rotary positions on the local layer's queries and keys
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

    def _rows(self, t: Tensor, Lp: int, heads: Optional[int] = None) -> Tensor:
        """(B, L, h*D) -> (B, Lp, h, D), zero-padded on the right (a view when Lp == L)."""
        B, L, _ = t.shape
        t = t.view(B, L, heads or self.heads, self.dim_head)
        return F.pad(t, (0, 0, 0, 0, 0, Lp - L)) if Lp > L else t

    def _rotations(self, n_factors: int, device: torch.device) -> Tensor:
        return layer_rotations(self.heads, self.dim_head, self.n_hashes, n_factors, device, self.training,
                               self.hash_seed)

    # ------------------------------------------------------------------ the pieces
    def prepare(self, h: Tensor, real: Optional[Tensor], real_len: Optional[Tensor], cache: Optional[dict]) -> dict:
        """Everything shared by the heads: padding, the LSH layout (hash rotations are drawn
        here, then the dropout mask, in the same order in every mode, so random draws replay)."""
        B, L, _ = h.shape
        chunk = {"lsh": self.bucket_size, "local": self.local_window}.get(self.kind, 1)
        Lp = math.ceil(L / chunk) * chunk
        real_p, shared_qk = None, None
        if self.kind != "full":
            real_p = torch.ones(B, L, dtype=torch.bool, device=h.device) if real is None else real
            real_p = F.pad(real_p, (0, Lp - L), value=False)  # (B, Lp)
        lay = None
        if self.kind == "lsh":
            assert real_p is not None  # set above for every kind but "full"
            if real_len is None:
                real_len = real_p.sum(1)
            bits = bucket_bits(real_len, self.bucket_size, self.n_buckets)
            bound = bits_bound(L, self.bucket_size, self.n_buckets)  # host-known: no sync on the GPU path
            rot = self._rotations(n_hash_factors(bits, bound), h.device)  # drawn even when the layout is cached
            lay = cache.get("layout") if cache is not None else None
            if lay is None:
                with torch.no_grad():
                    qk = F.linear(h.detach(), self.to_qk.weight)  # (B, L, H*D)
                    lay = lsh_layout(self._rows(qk, Lp).transpose(1, 2), real_p, bits, rot, self.n_hashes,
                                     self.bucket_size, self.causal)
                # without autograd and with one head group, attend() reuses this projection
                if not torch.is_grad_enabled() and len(self.head_groups(B, Lp)) == 1:
                    shared_qk = qk
                del qk
                if cache is not None:
                    cache["layout"] = lay
        elif self.kind == "local":
            assert real_p is not None
            lay = local_layout(real_p, self.heads, self.local_window, self.causal)
        mask = None
        if self.training and self.drop.p > 0:  # dropout on the layer's output, one mask for all heads
            mask = torch.rand(B, L, self.to_out.out_features, device=h.device) >= self.drop.p
        return {"L": L, "Lp": Lp, "real": real, "real_p": real_p, "layout": lay, "mask": mask, "qk": shared_qk}

    def head_groups(self, B: int, Lp: int) -> list[slice]:
        """Heads attended together: all of them, unless one head's (B, Lp, D) tensors are large;
        then few enough per group that a group's q/v/output stay near the execution policy's
        ``head_group_elems`` elements."""
        if self.kind == "full":
            return [slice(0, self.heads)]
        pol = current_policy(self.to_qk.weight.device)
        per = max(1, min(self.heads, pol.head_group_elems // max(1, B * Lp * self.dim_head)))
        return [slice(a, min(a + per, self.heads)) for a in range(0, self.heads, per)]

    def attend(self, h: Tensor, plan: dict, heads: slice, cache: Optional[dict] = None,
               into: Optional[Tensor] = None) -> Tensor:
        """The output projection's share of heads ``heads``: (B, L, dim), without bias or dropout.
        ``into`` (without autograd): add the share into this (B, L, dim) tensor and return it."""
        B, L = h.shape[0], plan["L"]
        D = self.dim_head
        rows = slice(heads.start * D, heads.stop * D)
        reuse = plan.get("qk") is not None and heads == slice(0, self.heads) and not torch.is_grad_enabled()
        qk = plan["qk"] if reuse else F.linear(h, self.to_qk.weight[rows])  # (B, L, hg*D)
        v = F.linear(h, self.to_v.weight[rows])
        if self.kind == "full":
            q = qk.view(B, L, -1, D).transpose(1, 2)  # (B, hg, L, D)
            out = full_attention(q, F.normalize(q, dim=-1), v.view(B, L, -1, D).transpose(1, 2), plan["real"],
                                 self.causal).transpose(1, 2)  # (B, L, hg, D)
        else:
            Lp, hg = plan["Lp"], heads.stop - heads.start
            lay = plan["layout"].select_heads(heads, self.heads)
            k = None  # lsh: shared-QK, the keys are the normalised queries
            q = self._rows(qk, Lp, hg)
            if self.kind == "local":
                k = self._rows(F.linear(h, self.to_k.weight[rows]), Lp, hg)
                if self.rope:
                    q, k = rotary(q), rotary(k)
            sub = cache.setdefault(("heads", heads.start), {}) if cache is not None else None
            out = chunked_attention(q, k, self._rows(v, Lp, hg), lay, cache=sub)[:, :L]
        if into is not None:  # no (B, L, dim) temporary per head group
            into.view(B * L, -1).addmm_(out.reshape(B * L, -1), self.to_out.weight[:, rows].t())
            return into
        return F.linear(out.reshape(B, L, -1), self.to_out.weight[:, rows])

    def _finish(self, fx: Tensor, plan: dict) -> Tensor:
        if torch.is_grad_enabled():
            fx = fx + self.to_out.bias
            if plan["mask"] is not None:
                fx = fx * plan["mask"] * (1.0 / (1.0 - self.drop.p))
            return fx
        fx += self.to_out.bias  # no autograd: in place
        if plan["mask"] is not None:
            fx.mul_(plan["mask"]).mul_(1.0 / (1.0 - self.drop.p))
        return fx

    # ------------------------------------------------------------------ entry points
    def forward(self, x: Tensor, real: Optional[Tensor] = None, real_len: Optional[Tensor] = None,
                cache: Optional[dict] = None) -> Tensor:
        """x: (B, L, dim); real: (B, L) bool, False = padding; real_len: (B,) count of real tokens.

        ``cache``: a dict kept between the forward pass and the reversible backward's
        recomputation, so the recomputation reuses the forward's hashes, sort order and (for
        inputs up to the execution policy's ``attention_cache_elems``) attention output.
        """
        h = self.norm(x)
        plan = self.prepare(h, real, real_len, cache)
        fx = None
        for heads in self.head_groups(x.shape[0], plan["Lp"]):
            if fx is None:
                fx = self.attend(h, plan, heads, cache)
            elif torch.is_grad_enabled():
                fx = fx + self.attend(h, plan, heads, cache)
            else:
                self.attend(h, plan, heads, cache, into=fx)  # no autograd: accumulate in place
        assert fx is not None  # head_groups() yields at least one group
        return self._finish(fx, plan)

    def forward_backward(self, x: Tensor, grad: Tensor, real: Optional[Tensor], real_len: Optional[Tensor],
                         cache: Optional[dict], subtract_from: Tensor) -> Tensor:
        """The reversible backward's F step: recompute ``forward(x)``, subtract it from
        ``subtract_from`` in place (y1 - F(x2) = x1) and backpropagate ``grad`` through it, a head
        group at a time, so only one group's activations exist at once. Accumulates parameter
        gradients; returns the gradient with respect to x.

        The projections' gradients are formed by hand with in-place matrix products (autograd
        would allocate a fresh (B, L, dim) tensor for every partial product); autograd runs
        the attention kernel and the layer norm.
        """
        if self.kind == "full" or torch.is_autocast_enabled(x.device.type):
            fx, dx = self._forward_backward_autograd(x, grad, real, real_len, cache)
            subtract_from.sub_(fx)
            return dx
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            h = self.norm(xg)
        hd = h.detach()
        plan = self.prepare(hd, real, real_len, cache)
        g = grad
        if plan["mask"] is not None:
            g = grad * plan["mask"] * (1.0 / (1.0 - self.drop.p))
        B, L, dim = hd.shape
        D = self.dim_head
        h2, g2 = hd.reshape(-1, dim), g.reshape(-1, dim)  # (B*L, dim)
        dh = torch.empty_like(hd)  # the first product below writes it, the others add
        y2, dh2 = subtract_from.view(-1, dim), dh.view(-1, dim)
        dh_written = False
        keep = None if plan["mask"] is None else plan["mask"].view(-1, dim).to(hd.dtype) * (1.0 / (1.0 - self.drop.p))
        projections = [self.to_qk, self.to_v] + ([self.to_k] if self.kind == "local" else [])
        for mod in projections + [self.to_out]:
            if mod.weight.grad is None:
                mod.weight.grad = torch.zeros_like(mod.weight)
        for heads in self.head_groups(B, plan["Lp"]):
            rows = slice(heads.start * D, heads.stop * D)
            hg = heads.stop - heads.start
            ins = [(h2 @ mod.weight[rows].t()).view(B, L, hg * D).requires_grad_(True) for mod in projections]
            lay = plan["layout"].select_heads(heads, self.heads)
            sub = cache.setdefault(("heads", heads.start), {}) if cache is not None else None
            with torch.enable_grad():
                q, v = self._rows(ins[0], plan["Lp"], hg), self._rows(ins[1], plan["Lp"], hg)
                k = self._rows(ins[2], plan["Lp"], hg) if self.kind == "local" else None
                if self.rope and k is not None:
                    q, k = rotary(q), rotary(k)
                out = chunked_attention(q, k, v, lay, cache=sub)[:, :L].reshape(B * L, hg * D)
            w_out = self.to_out.weight[:, rows]  # (dim, hg*D)
            if keep is None:  # y1 -= this group's share, without a (B, L, dim) temporary
                y2.addmm_(out.detach(), w_out.t(), alpha=-1.0)
            else:
                y2.sub_((out.detach() @ w_out.t()) * keep)
            _grad(self.to_out.weight)[:, rows].addmm_(g2.t(), out.detach())
            torch.autograd.backward(out, g2 @ w_out)
            del out, q, k, v
            for mod, t in zip(projections, ins):
                gt = t.grad.view(-1, hg * D)
                if dh_written:
                    dh2.addmm_(gt, mod.weight[rows])
                else:
                    torch.mm(gt, mod.weight[rows], out=dh2)
                    dh_written = True
                _grad(mod.weight)[rows].addmm_(gt.t(), h2)
            del ins
        bias = self.to_out.bias
        db = g2.sum(0)
        bias.grad = db if bias.grad is None else bias.grad + db
        with torch.no_grad():
            y2.sub_(bias if keep is None else bias * keep)
        torch.autograd.backward(h, dh)
        return _grad(xg)

    def _forward_backward_autograd(self, x: Tensor, grad: Tensor, real: Optional[Tensor],
                                   real_len: Optional[Tensor], cache: Optional[dict]) -> tuple[Tensor, Tensor]:
        """``forward_backward`` through autograd, still a head group at a time (exact attention,
        and autocast, whose casts the hand-written products above do not replay)."""
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            h = self.norm(xg)
        hd = h.detach().requires_grad_(True)
        plan = self.prepare(hd, real, real_len, cache)
        g = grad
        if plan["mask"] is not None:
            g = grad * plan["mask"] * (1.0 / (1.0 - self.drop.p))
        fx = torch.zeros_like(grad)
        for heads in self.head_groups(x.shape[0], plan["Lp"]):
            with torch.enable_grad():
                part = self.attend(hd, plan, heads, cache)
            torch.autograd.backward(part, g)
            fx += part.detach()
            del part
        bias = self.to_out.bias
        db = g.sum(dim=tuple(range(g.dim() - 1)))
        bias.grad = db if bias.grad is None else bias.grad + db
        torch.autograd.backward(h, hd.grad)
        with torch.no_grad():
            fx = self._finish(fx, plan)
        return fx, _grad(xg)


def _grad(t: Tensor) -> Tensor:
    """``t.grad``, which the code has just allocated or backpropagated into (None would be a bug)."""
    assert t.grad is not None
    return t.grad
