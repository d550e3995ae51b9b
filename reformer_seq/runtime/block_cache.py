"""Reuse large CPU buffers instead of taking fresh, zeroed pages from the OS for each one.

glibc gives every buffer above 32 MB a mapping of its own and unmaps it when freed, and the
kernel zeroes each page of a new mapping on first touch. A training step at 256K tokens
allocates about fifty 64 MB activation-sized buffers (projections, norms, gradients), so about
8% of its CPU time went to clearing pages that were overwritten at once. ``csrc/block_cache.cpp``
puts a small cache in front of torch's CPU allocator: freed buffers of at least ``min_bytes``
are kept and handed back for the next request of exactly the same size, which the same layers
make step after step. Measured on a 2-core CPU (small config): at 256K tokens, alternating
steps in one process, system time per step 1.12 -> 0.25 s and the median step 7.84 -> 7.59 s
(user time rose by about as much as system time fell, probably because a freshly zeroed buffer
is partly in the CPU cache and a reused one is not); at 1M tokens, separate runs, 31.2 -> 27.3 s
per step and system time 6.6 -> 1.0 s, peak 3618 -> 3596 MiB.

Resident memory does not grow with it: a request that finds no kept block of its size first
frees kept blocks until those in use, those kept and the new one add up to no more than the
most that was ever in use at once; ``SEQFORMER_BLOCK_CACHE_MB`` can cap the kept bytes further.

It is built on first use with the system C++ compiler against the installed torch's headers
(about 2 s, cached beside the attention kernel) and is process-wide: every CPU tensor
allocation goes through it. :class:`~reformer_seq.model.lm.ReformerLM` turns it on when it first
sees an input with 16 MB activations (``B * L * dim >= 2**22``: 64K tokens at dim 64), if
process-wide tuning is on (:mod:`.tuning`: off by default, on in the ``seqformer`` commands). Where
no compiler or headers exist, or with ``SEQFORMER_BLOCK_CACHE=0``, nothing changes.
``SEQFORMER_BLOCK_CACHE_MB`` caps the kept bytes (by default only the peak rule above bounds
them); :func:`release` frees what is kept.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional

import torch

from .policy import current_policy
from .build import BuildError, LazyLibrary, compile_library, find_compiler

SOURCE = Path(__file__).resolve().parent / "csrc" / "block_cache.cpp"

INSTALL_CXX = ("install a C++17 compiler, g++ 9 or newer or clang++ (Debian/Ubuntu: apt install g++; Fedora: dnf "
               "install gcc-c++; macOS: xcode-select --install), or set CXX to one")
_ensured: Optional[bool] = None


def _build() -> ctypes.CDLL:
    cxx = find_compiler(cxx=True)
    if cxx is None:
        raise BuildError(f"no C++ compiler found; {INSTALL_CXX}")
    root = Path(torch.__file__).resolve().parent
    include, libdir = root / "include", root / "lib"
    if not (include / "c10" / "core" / "Allocator.h").is_file():
        raise BuildError(f"torch's C++ headers are missing under {include}; reinstall torch from a wheel that "
                         f"ships them (the PyPI wheels do)")
    abi = int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{include}"]
    libs = [f"-L{libdir}", "-lc10", f"-Wl,-rpath,{libdir}", "-pthread"]
    out = compile_library(SOURCE, cxx, flags, libs, key_extra=f"torch {torch.__version__} {root}")
    lib = ctypes.CDLL(str(out))
    lib.seq_block_cache_enable.argtypes = [ctypes.c_longlong, ctypes.c_longlong]
    lib.seq_block_cache_enable.restype = ctypes.c_int
    lib.seq_block_cache_release.argtypes = []
    lib.seq_block_cache_release.restype = None
    lib.seq_block_cache_stats.argtypes = [ctypes.POINTER(ctypes.c_longlong)]
    lib.seq_block_cache_stats.restype = None
    lib.seq_block_cache_hold_lock.argtypes = [ctypes.c_longlong]
    lib.seq_block_cache_hold_lock.restype = None
    return lib


_LIB = LazyLibrary(_build, "CPU buffer cache", "long inputs run a little slower", INSTALL_CXX)


def _library() -> Optional[ctypes.CDLL]:
    return _LIB.get()


def unavailable_reason() -> Optional[str]:
    """Why the cache cannot be built here (the build error; for skip messages), or None."""
    _library()
    return _LIB.error


def cap_bytes() -> int:
    """The cap on kept bytes from ``SEQFORMER_BLOCK_CACHE_MB``; -1 (no cap beyond the peak rule)
    when it is not set."""
    raw = os.environ.get("SEQFORMER_BLOCK_CACHE_MB")
    if raw is None or raw == "":
        return -1
    try:
        mb = int(raw)
    except ValueError:
        raise ValueError(f"SEQFORMER_BLOCK_CACHE_MB={raw!r}; give a whole number of MiB, e.g. 512") from None
    if mb < 0:
        raise ValueError(f"SEQFORMER_BLOCK_CACHE_MB={mb}; give 0 or more MiB (0 keeps nothing)")
    return mb << 20


def enable(cap: Optional[int] = None, min_bytes: Optional[int] = None) -> bool:
    """Put the cache in front of torch's CPU allocator (or change its limits); True when it is
    active. ``cap``: kept bytes at most (default :func:`cap_bytes`; negative: no cap);
    ``min_bytes``: smaller buffers bypass it (default: the execution policy's
    ``buffer_cache_min_bytes``; smaller buffers come from glibc's heap, which reuses them well).
    ``SEQFORMER_BLOCK_CACHE=0`` turns it off (returns False)."""
    if os.environ.get("SEQFORMER_BLOCK_CACHE", "1") == "0":
        return False
    cap = cap_bytes() if cap is None else int(cap)
    lib = _library()
    if lib is None:
        return False
    min_bytes = current_policy().buffer_cache_min_bytes if min_bytes is None else int(min_bytes)
    return bool(lib.seq_block_cache_enable(cap, min_bytes))


def ensure() -> bool:
    """:func:`enable` with the defaults, once per process (what the model calls)."""
    global _ensured
    if _ensured is None:
        _ensured = enable()
    return _ensured


def suspend() -> None:
    """Keep nothing from now on and free what is kept (the cache stays torch's CPU allocator,
    since buffers it handed out must be freed through it); the next :func:`ensure` turns it on
    again. What :func:`~reformer_seq.runtime.tuning.set_process_tuning` (False) calls."""
    global _ensured
    if _LIB.lib is not None and _ensured:
        _LIB.lib.seq_block_cache_enable(0, current_policy().buffer_cache_min_bytes)
        release()
    _ensured = None


def release() -> None:
    """Free every kept buffer now (buffers in use are unaffected)."""
    if _LIB.lib is not None:
        _LIB.lib.seq_block_cache_release()


def stats() -> dict:
    """hits, misses (requests of at least ``min_bytes``), kept_bytes, in_use (blocks handed out)."""
    if _LIB.lib is None:
        return {"hits": 0, "misses": 0, "kept_bytes": 0, "in_use": 0}
    out = (ctypes.c_longlong * 4)()
    _LIB.lib.seq_block_cache_stats(out)
    return {"hits": out[0], "misses": out[1], "kept_bytes": out[2], "in_use": out[3]}
