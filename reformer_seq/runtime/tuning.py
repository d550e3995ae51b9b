"""Process-wide tuning for long inputs, as one switch: off by default for library users, on in the
``seqformer`` commands.

Three settings speed up or shrink long-sequence work but change the whole Python process, not
only seqformer's own tensors, so a library user chooses them:

* **CPU buffer cache** (:mod:`.block_cache`): a cache in front of torch's CPU allocator that
  hands freed buffers of 16 MB or more back for the next request of the same size instead of
  taking fresh, zeroed pages from the OS. Turned on when the model first sees an input with
  ``B * L * dim >= 2**22`` (64K tokens at dim 64) on the CPU. Does: system time per step at 1M
  tokens 6.6 -> 1.0 s (31.2 -> 27.3 s a step). Costs: every CPU tensor allocation of the process
  goes through it (a lock and a table entry for the large ones); kept buffers stay resident
  (never more than the peak in use; ``SEQFORMER_BLOCK_CACHE_MB`` caps them).
* **glibc heap thresholds** (:mod:`.heap`): fixed mmap/trim thresholds of 17 MiB, so freed
  buffers of that size or more go back to the OS. Turned on for inputs with
  ``B * L * dim >= 2**25`` (512K tokens at dim 64). Does: a 1M-token step peaks at 3.6 instead of
  5.2 GB. Costs: page faults when those buffers are allocated again, and glibc's own adaptive
  threshold is off for the rest of the process (for every library in it).
* **gc.freeze** during :func:`~reformer_seq.tasks.training.pretrain`: the objects alive when training
  starts (modules, torch, Biopython) leave the cyclic garbage collector's generations, whose
  full passes otherwise walk them during the steps (3-4% of a 64K-token step). Costs: those
  objects are not collected while training runs (they live for the run anyway); undone
  (``gc.unfreeze``) when the run ends.

Use ``with runtime_tuning(): ...`` (restores the previous state on exit) or
``set_process_tuning(True)`` (for the rest of the process). On leaving, the buffer cache frees
what it kept and keeps nothing more (it stays torch's allocator: buffers it handed out are
freed through it), the garbage collector is unfrozen at the end of each run, and the heap
thresholds stay (glibc has no call that restores its adaptive threshold).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from . import block_cache, heap
from .policy import current_policy

_on = False


def process_tuning() -> bool:
    """Whether the process-wide settings may be switched on (see the module docstring)."""
    return _on


def set_process_tuning(on: bool) -> bool:
    """Allow (True) or stop (False) the process-wide settings; returns the previous choice.
    Stopping frees the buffer cache's kept buffers and keeps nothing more."""
    global _on
    previous, _on = _on, bool(on)
    if previous and not _on:
        block_cache.suspend()
    return previous


@contextlib.contextmanager
def runtime_tuning(on: bool = True) -> Iterator[None]:
    """``with runtime_tuning(): ...``: the process-wide settings are allowed inside, and the
    previous choice is restored on exit (what the ``seqformer`` commands do)."""
    previous = set_process_tuning(on)
    try:
        yield
    finally:
        set_process_tuning(previous)


def tune_for_input(elems: int, device_type: str) -> None:
    """Called by the model with ``B * L * dim``: switches on what suits an input of this size,
    once each, when tuning is allowed; nothing otherwise."""
    if not _on:
        return
    pol = current_policy()
    if elems >= pol.buffer_cache_from_elems and device_type == "cpu":
        block_cache.ensure()  # reuse large freed buffers instead of fresh zeroed pages
    if elems >= pol.long_input_elems:
        heap.limit_heap_fragmentation()  # long inputs: freed buffers go back to the OS


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """``gc.freeze()`` inside when tuning is allowed (``gc.unfreeze()`` on exit); else nothing."""
    import gc

    if not _on:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
