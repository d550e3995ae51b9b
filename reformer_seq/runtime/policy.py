"""Execution policy: how the network runs on this machine, apart from what it computes.

:class:`~reformer_seq.config.ReformerConfig` says what a model is (its layers, sizes, hashing);
it is saved with every checkpoint. :class:`ExecutionPolicy` says how the computation is cut into
pieces to bound memory and to suit the machine: block and group sizes, segment lengths and the
input sizes at which the model switches strategy. None of it changes a result beyond float
rounding (the golden test and the chunked-vs-whole equivalence tests hold under any policy), so
it is not saved with checkpoints and may differ between the machine that trained a model and
the one that runs it.

The defaults were tuned on a 2-core x86-64 CPU with 24 GiB (the figures are in each field's
comment and in the module that uses it). Change them for a process with :func:`set_policy`, or
for a block of code with :func:`use_policy` (what the tests do)::

    from reformer_seq.runtime.policy import use_policy
    with use_policy(attention_block_elems=1 << 20):   # smaller attention temporaries
        model(tokens)

The current policy is one per process (like ``torch.set_num_threads``), read by the model at
call time.

**The GPU path.** On CUDA tensors (and everywhere under ``SEQFORMER_KERNEL=gpu``, which runs the
CUDA code path on any device so that tests and op counts run without a GPU) the model reads
``current_policy(device)``: the policy in force with every field the user left at its CPU default
replaced by :data:`GPU_DEFAULTS`. A GPU is launch-bound, not cache-bound: one piece per tensor
costs one kernel launch per op, so the GPU defaults make the pieces large (one feed-forward slice
and one hashing block up to 256K positions, all heads together up to 1M tokens at 4 x 16 wide).
A field set with :func:`set_policy` / :func:`use_policy` holds on both paths (set it to the CPU
default's value and the GPU path still takes its own default).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from ..errors import ConfigError


@dataclass(frozen=True)
class ExecutionPolicy:
    """Chunk sizes and thresholds. ``elems`` are tensor elements, ``bytes`` bytes."""

    # ---------------------------------------------------------------- attention
    # logits computed per block of chunked attention (heads x chunks x chunk x keys): ~16 MB of
    # float32, which bounds attention's temporaries whatever the length (model/attention/chunked.py)
    attention_block_elems: int = 1 << 22
    # the largest attention output (elements) kept from the forward for the reversible backward's
    # recomputation; longer inputs recompute it (model/attention/chunked.py)
    attention_cache_elems: int = 1 << 24
    # heads run together while one group's (B, L, D) q/v/output stay near this many elements
    # (model/attention/layer.py)
    head_group_elems: int = 1 << 24
    # positions hashed at a time: bounds the rotation product's temporary (model/attention/lsh.py)
    hash_row_block: int = 1 << 13
    # the largest dense bias matrix exact attention may build (1 GiB of float32); a longer input
    # raises ConfigError naming LSH or local attention instead (model/attention/exact.py)
    dense_max_elems: int = 1 << 28
    # queries per segment of a hash round's sorted order in the compiled kernel: its work buffers
    # hold one segment, not the whole round (model/attention/kernel.py, csrc/seqformer_kernels.c)
    kernel_segment_rows: int = 1 << 18

    # ---------------------------------------------------------------- feed-forward and head
    # positions per feed-forward chunk when the model config's ff_chunk_size is 0 (auto): short
    # inputs, and inputs of at least long_input_elems (model/feedforward.py)
    ff_chunk_short: int = 4096
    ff_chunk_long: int = 16384
    # B * L * dim from which an input counts as long (512K tokens at dim 64): larger feed-forward
    # chunks, the final norm recomputed in the backward (model/lm.py), and, with process tuning
    # on, glibc's heap thresholds fixed (runtime/heap.py)
    long_input_elems: int = 1 << 25

    # ---------------------------------------------------------------- process memory (tuning on)
    # glibc mmap/trim threshold set for long inputs: just above the feed-forward's 16 MiB hidden
    # buffer, so that one stays in the heap (runtime/heap.py)
    heap_threshold_bytes: int = 17 << 20
    # B * L * dim from which the CPU buffer cache is switched on (64K tokens at dim 64), and the
    # smallest buffer it keeps (runtime/block_cache.py)
    buffer_cache_from_elems: int = 1 << 22
    buffer_cache_min_bytes: int = 16 << 20

    # ---------------------------------------------------------------- data
    # positions scored at a time when scanning motifs and counting bases (tasks/motifs/)
    motif_scan_positions: int = 1 << 22
    # the largest Markov baseline table kept as a dense array, in counts (4^(order+1)): up to
    # order 10; higher orders count sorted sparse keys (tasks/evaluation/markov.py)
    markov_dense_max_cells: int = 4 ** 11
    # the gene HMM baseline scores a long segment in windows of gene_hmm_window bases, each after
    # gene_hmm_burn_in bases of left context (the reading frame is local: 5e-6 bits/base from the
    # exact forward on E. coli's held-out 10%), gene_hmm_batch windows per vectorised pass
    # (tasks/evaluation/gene_hmm_baseline.py)
    gene_hmm_window: int = 2000
    gene_hmm_burn_in: int = 500
    gene_hmm_batch: int = 256

    # ---------------------------------------------------------------- the GPU path's attention
    # elements (rounds x batch*heads x length x head width) of one fused attention call's gathered
    # queries; more rounds are split into several calls (model/attention/flex.py)
    flex_round_elems: int = 1 << 24
    # the fused kernel's block (positions) of its hand-built banded BlockMask: a multiple of 16
    # (model/attention/flex.py)
    flex_block: int = 128

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ExecutionPolicy.{f.name} must be a positive whole number, got {value!r}")


# The GPU path's defaults (see the module docstring); fields not named take the CPU default.
# Sized so that one H200 step of the benchmark config at 1M tokens stays within ~4 GiB: one
# feed-forward slice's hidden layer at 2**18 positions is 256 MiB of float32 at dim 64, one hash
# block's projection 256 MiB, one fused call's gathered q/k/v 3 x 256 MiB at 1M (one round).
GPU_DEFAULTS: dict[str, int] = dict(
    attention_block_elems=1 << 27,  # the reference path, where the fused backend is missing
    attention_cache_elems=1 << 28,
    head_group_elems=1 << 26,
    hash_row_block=1 << 18,
    ff_chunk_short=1 << 18,
    ff_chunk_long=1 << 18,
    flex_round_elems=1 << 26,
)

_current = ExecutionPolicy()
_CPU_DEFAULT = ExecutionPolicy()
_gpu_cache: dict[int, tuple[ExecutionPolicy, ExecutionPolicy]] = {}


def gpu_path(device: Any = None) -> bool:
    """Whether work on ``device`` (a torch.device, a device string, or None) takes the GPU path:
    CUDA devices, and every device under ``SEQFORMER_KERNEL=gpu``."""
    if os.environ.get("SEQFORMER_KERNEL", "").strip().lower() == "gpu":
        return True
    if device is None:
        return False
    kind = device if isinstance(device, str) else getattr(device, "type", "")
    return str(kind).split(":")[0] == "cuda"


def _gpu_policy(policy: ExecutionPolicy) -> ExecutionPolicy:
    """``policy`` with the fields left at their CPU default replaced by :data:`GPU_DEFAULTS`."""
    hit = _gpu_cache.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit[1]
    changes = {k: v for k, v in GPU_DEFAULTS.items() if getattr(policy, k) == getattr(_CPU_DEFAULT, k)}
    gpu = dataclasses.replace(policy, **changes)
    _gpu_cache.clear()
    _gpu_cache[id(policy)] = (policy, gpu)
    return gpu


def current_policy(device: Any = None) -> ExecutionPolicy:
    """The policy in force for work on ``device`` (None: the CPU path, unless
    ``SEQFORMER_KERNEL=gpu``); see :func:`gpu_path` and the module docstring."""
    return _gpu_policy(_current) if gpu_path(device) else _current


def set_policy(policy: Optional[ExecutionPolicy] = None, **changes: int) -> ExecutionPolicy:
    """Put ``policy`` (default: the current one) with ``changes`` in force; returns the previous
    policy. Unknown field names raise ConfigError naming them."""
    global _current
    base = _current if policy is None else policy
    names = [f.name for f in dataclasses.fields(ExecutionPolicy)]
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise ConfigError(f"ExecutionPolicy has no field {', '.join(unknown)}; the fields are {', '.join(names)}")
    previous, _current = _current, dataclasses.replace(base, **changes)
    return previous


@contextlib.contextmanager
def use_policy(policy: Optional[ExecutionPolicy] = None, **changes: int) -> Iterator[ExecutionPolicy]:
    """``set_policy`` for the block, restoring the previous policy on exit."""
    previous = set_policy(policy, **changes)
    try:
        yield current_policy()
    finally:
        set_policy(previous)
