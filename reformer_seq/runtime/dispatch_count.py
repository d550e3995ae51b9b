"""Counting ATen ops and host syncs: how launch-bound a piece of work is, measured on any device.

On a GPU every ATen op that touches device memory is about one kernel launch, and a step whose
ops cost more host time than device time leaves the GPU idle (``shared/design/gpu_attention.md``:
seqformer's H200 step times fit ``0.021 s + 11.4 us x ops``). A host sync (an op that reads a
device value back: ``.item()``, ``nonzero``, a boolean index, ...) stalls the host until the GPU
has caught up and blocks CUDA graphs and ``torch.compile``. :class:`OpCounter` is a
``TorchDispatchMode`` that counts both for the code run inside it, on a CPU as well (the op
sequence of the GPU path does not depend on the device: ``SEQFORMER_KERNEL=gpu``).

What it cannot see on a CPU: device-to-host copies (``.cpu()``, ``.tolist()`` of a CUDA tensor).
Eager FlexAttention cannot run inside it (its dynamo wrapper refuses a dispatch mode): count the
GPU path with a stand-in for the fused call (``benchmarks/op_count.py:fused_stand_in``).
"""
from __future__ import annotations

import collections
import contextlib
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops that read device data back to the host (on CUDA: a synchronisation)
SYNC_OPS = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "unique_dim",
                      "_unique2", "unique_consecutive", "bincount", "item", "masked_scatter_"})
# view and metadata ops launch no kernel
NO_KERNEL = frozenset({"view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "unsqueeze",
                       "squeeze", "select", "slice", "alias", "as_strided", "detach", "split", "unbind",
                       "narrow", "_reshape_alias", "empty", "empty_strided", "empty_like", "unfold", "diagonal",
                       "lift_fresh", "split_with_sizes", "chunk", "flatten", "view_as", "expand_as", "sym_size",
                       "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size",
                       "_has_compatible_shallow_copy_type"})


def _base(name: str) -> str:
    return name.split(".")[0]


def _bool_index(args) -> bool:
    """aten.index / index_put with a boolean mask among the indices (a nonzero inside)."""
    if len(args) < 2 or not isinstance(args[1], (list, tuple)):
        return False
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in args[1])


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as c: ...``: ``c.ops`` ATen ops, ``c.launches`` those that launch a
    kernel, ``c.syncs`` host syncs, ``c.by_op`` a Counter by op name, ``c.sync_ops`` by name.
    ``c.add(name)`` counts work done outside ATen (a fused kernel); ``with c.paused():`` stops
    counting (a stand-in's own ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = self.launches = self.syncs = 0
        self.by_op: collections.Counter = collections.Counter()
        self.sync_ops: collections.Counter = collections.Counter()
        self._paused = 0

    def add(self, name: str, launches: int = 1) -> None:
        self.ops += launches
        self.launches += launches
        self.by_op[name] += launches

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._paused:
            name = _base(func.__name__) if hasattr(func, "__name__") else str(func)
            self.ops += 1
            self.by_op[name] += 1
            if name not in NO_KERNEL:
                self.launches += 1
            if name in SYNC_OPS or (name in ("index", "index_put", "index_put_") and _bool_index(args)):
                self.syncs += 1
                self.sync_ops[name] += 1
        return func(*args, **(kwargs or {}))
