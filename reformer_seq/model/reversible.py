"""Reversible residual stack (RevNet; Reformer, Kitaev et al., ICLR 2020, section 3).

Each block maps ``(x1, x2)`` to ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)`` with F the attention
and G the feed-forward. Inputs are recovered from outputs: ``x2 = y2 - G(y1)``,
``x1 = y1 - F(x2)``, so the backward pass keeps only the last block's outputs and rebuilds
every block's input on the way down: activation memory does not grow with depth.

:class:`ReversibleFunction` is a custom autograd Function (not ``torch.utils.checkpoint``):
its forward runs all blocks without autograd state; its backward walks the blocks in reverse,
recomputing F and G under autograd just long enough to backpropagate through them, and
accumulates parameter gradients as it goes. Random draws (dropout masks, LSH rotations) are
replayed by restoring the RNG state each F/G call saw in the forward pass; LSH hashes and sort
orders are kept from the forward pass and reused. Autocast state is replayed too. G is
recomputed and backpropagated a chunk of positions at a time (it is position-wise), so its
wide hidden layer never exists for the whole sequence.

:func:`run_blocks` runs the same blocks either way (``reversible`` or plain autograd); both
compute the same function with the same parameters.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from .attention.layer import SelfAttention
from .feedforward import FeedForward


class _RngState:
    """The CPU (and, for CUDA tensors, the device's) RNG state at one moment."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class _Autocast:
    """The autocast state of the forward pass, to re-enter in the backward pass."""

    def __init__(self, device: torch.device):
        self.device_type = device.type
        self.enabled = torch.is_autocast_enabled(self.device_type)
        self.dtype = torch.get_autocast_dtype(self.device_type) if self.enabled else None

    def __call__(self):
        if not self.enabled:
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(self.device_type, dtype=self.dtype)


class ReversibleBlock(nn.Module):
    """One block: F = attention, G = feed-forward, on two residual streams."""

    def __init__(self, attn: SelfAttention, ff: FeedForward):
        super().__init__()
        self.attn = attn
        self.ff = ff

    def forward(self, x1: Tensor, x2: Tensor, real: Optional[Tensor], real_len: Optional[Tensor],
                cache: Optional[dict] = None) -> tuple[Tensor, Tensor]:
        y1 = x1 + self.attn(x2, real, real_len, cache)
        y2 = x2 + self.ff(y1)
        return y1, y2

    def backward_pass(self, y1: Tensor, y2: Tensor, dy1: Tensor, dy2: Tensor, real: Optional[Tensor],
                      real_len: Optional[Tensor], cache: dict, rng_f: Optional[_RngState],
                      rng_g: Optional[_RngState], autocast: _Autocast, own_grads: bool = False
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """From outputs and their gradients to inputs and theirs; accumulates parameter grads.
        ``own_grads``: dy1 and dy2 were made by the previous block's backward_pass (may be
        written in place)."""
        # G: x2 = y2 - G(y1); dy1 += dG/dy1 . dy2, one slice of positions at a time. The inputs are
        # rebuilt in place of the outputs (which are not needed again): two fewer (B, L, dim) buffers.
        x2 = y2
        # dy1 is accumulated into in place. The top block's dy1 and dy2 may share memory (the
        # stack's output is (y1 + y2) / 2) and autograd owns them: copy those; below the top block
        # both are this backward's own, distinct tensors.
        dy1_total = dy1 if own_grads else dy1.clone()
        with torch.random.fork_rng(devices=[y1.device] if y1.device.type == "cuda" else [], enabled=rng_g is not None):
            if rng_g is not None:
                rng_g.restore()
            for sl in self.ff.slices(y1.shape[1], y1.shape[0]):
                y1c = y1[:, sl].detach().requires_grad_(True)
                with torch.enable_grad(), autocast():
                    gc = self.ff.net(y1c)
                torch.autograd.backward(gc, dy2[:, sl])
                with torch.no_grad():
                    x2[:, sl] -= gc
                    assert y1c.grad is not None  # the backward just above filled it
                    dy1_total[:, sl] += y1c.grad
        # F: x1 = y1 - F(x2); dx2 = dy2 + dF/dx2 . dy1 (the attention recomputes and backpropagates
        # a head group at a time)
        with torch.random.fork_rng(devices=[y1.device] if y1.device.type == "cuda" else [], enabled=rng_f is not None):
            if rng_f is not None:
                rng_f.restore()
            with autocast():
                dx2 = self.attn.forward_backward(x2, dy1_total, real, real_len, cache, subtract_from=y1)
        with torch.no_grad():
            dx2 = dx2.add_(dy2)
        return y1, x2, dy1_total, dx2  # y1 now holds x1


class ReversibleFunction(torch.autograd.Function):
    """Runs a list of :class:`ReversibleBlock` with O(1) activation memory in depth."""

    @staticmethod
    def forward(ctx, x1: Tensor, x2: Tensor, blocks: Sequence[ReversibleBlock],
                real: Optional[Tensor], real_len: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        device = x1.device
        record = any(b.training for b in blocks)
        states: list[Any] = []
        caches: list[dict] = []
        with torch.no_grad():
            for i, blk in enumerate(blocks):
                cache: dict = {}
                rng_f = _RngState(device) if record else None
                fx = blk.attn(x2, real, real_len, cache)
                y1 = fx.add_(x1) if fx.dtype == x1.dtype else x1 + fx  # fx is fresh: add in place
                del fx
                rng_g = _RngState(device) if record else None
                # y2 = x2 + G(y1), in place over x2 once x2 is our own (the first block's is the input)
                y2 = blk.ff.add_to(x2 if i > 0 else x2.clone(), y1)
                states.append((rng_f, rng_g))
                caches.append(cache)
                x1, x2 = y1, y2
        ctx.blocks, ctx.states, ctx.caches = blocks, states, caches
        ctx.real, ctx.real_len, ctx.autocast = real, real_len, _Autocast(device)
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, dy1: Tensor, dy2: Tensor):
        y1, y2 = ctx.saved_tensors
        own = False  # the top block's gradients come from autograd
        for blk, (rng_f, rng_g), cache in zip(reversed(ctx.blocks), reversed(ctx.states), reversed(ctx.caches)):
            y1, y2, dy1, dy2 = blk.backward_pass(y1, y2, dy1, dy2, ctx.real, ctx.real_len, cache,
                                                 rng_f, rng_g, ctx.autocast, own_grads=own)
            own = True
            cache.clear()  # this block's hashes are no longer needed
        return dy1, dy2, None, None, None


def run_blocks(blocks: Sequence[ReversibleBlock], x: Tensor, real: Optional[Tensor], real_len: Optional[Tensor],
               reversible: bool) -> Tensor:
    """Run the stack on x (B, L, dim) with both streams starting at x; returns (y1 + y2) / 2."""
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for b in blocks for p in b.parameters()))
    if reversible and needs_grad:
        if not x.requires_grad:  # a Function's backward runs only if an input needs a gradient
            x = x.detach().requires_grad_(True)
        y1, y2 = ReversibleFunction.apply(x, x, list(blocks), real, real_len)
    else:
        y1, y2 = x, x
        for blk in blocks:
            y1, y2 = blk(y1, y2, real, real_len)
    return (y1 + y2) * 0.5
