"""Keep the resident set honest on glibc: return freed activation buffers to the OS.

glibc serves allocations below its mmap threshold (which grows up to 32 MB as large blocks are
freed) from heap arenas, and a freed block there stays resident until the top of the heap is
free. Long-sequence training allocates and frees many 4-32 MB buffers (softmax statistics,
hashing blocks, per-head projections), so the resident set can sit a gigabyte or more above the
memory actually in use. Fixing the thresholds at 17 MiB makes every buffer of that size or more
a mapping of its own, unmapped when freed, while the feed-forward's hidden buffers (16 MiB at
16384 positions, dim 64) stay in the heap and are reused: with a 4 MiB threshold they were
mapped afresh for every chunk, and a 1M-token step took 32.0 s instead of 29.0 s (peak 3.36 vs
3.52 GiB). The cost is page faults on every re-allocation of the larger buffers (measured with
4 MiB thresholds: about 30% slower steps at 64K tokens, 11% at 256K), so
:class:`~reformer_seq.model.lm.ReformerLM` turns it on only when it first sees a long input
(``B * L * dim >= 2**25``, 512K tokens at dim 64) and process-wide tuning is on (:mod:`.tuning`;
off by default, on in the ``seqformer`` commands), where the saving decides whether a run fits
(1M tokens: 5.2 GB peak without it). 256K tokens peak at 1.5 GB without it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Optional

from .policy import current_policy

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_done = False


def limit_heap_fragmentation(threshold: Optional[int] = None) -> bool:
    """Set glibc's mmap and trim thresholds (process-wide); False where not glibc."""
    threshold = threshold or current_policy().heap_threshold_bytes  # just above the FF's 16 MiB buffer
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
    _done = ok
    return ok
