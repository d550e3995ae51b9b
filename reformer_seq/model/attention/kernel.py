"""The compiled CPU kernel of chunked attention: built on first use, loaded with ctypes.

``csrc/seqformer_kernels.c`` is plain C99 with GCC/Clang vector extensions (no torch headers, no
OpenMP): it compiles in about a second with the system C compiler (GCC 9 or newer, or clang;
``CC`` chooses) into a shared library cached under ``$SEQFORMER_CACHE_DIR/kernels`` (default
``~/.cache/seqformer/kernels``). It is built with ``-march=native``, so the cache key holds the
source, the compiler's version, the flags and what ``-march=native`` means to that compiler on
this machine (the target flags it expands to, asked once per process), on any architecture.

If no compiler is available or the build fails, one warning says what failed and what to
install, and the pure-PyTorch reference in :mod:`.chunked` is used instead (the same
results, about 3x slower at 64K tokens). A failed build is remembered by a ``.failed`` marker
beside where the library would be (same key), so later processes do not retry it; delete the
marker, or change the compiler, to try again.

``SEQFORMER_KERNEL=torch`` forces the reference, ``SEQFORMER_KERNEL=c`` makes a failed build an
error, and the default ``auto`` uses the kernel when it builds. ``SEQFORMER_KERNEL=gpu`` runs the
CUDA code path on any device (the fused backend of :mod:`.flex` and the GPU execution policy;
eager and slow on a CPU: for tests and op counts). :func:`load_library` builds
and loads a copy with other flags or another compiler (for tests) without touching the one the
library uses; the kernel functions take it as ``lib=``.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from ...runtime.policy import current_policy
from ...runtime.build import BuildError, LazyLibrary, compile_library, find_compiler

SOURCE = Path(__file__).resolve().parent / "csrc" / "seqformer_kernels.c"
# -ffp-contract=fast: -std=c99 alone turns off fused multiply-adds (ISO C), which made every
# a * b + c two instructions; fused, the forward is ~11% and the backward ~5% faster at 64K tokens.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=fast", "-shared", "-fPIC", "-std=c99", "-pthread"]
LIBS = ["-lm"]
# what a failed build's warning asks for
INSTALL_C = ("install a C compiler, GCC 9 or newer or clang (Debian/Ubuntu: apt install gcc; Fedora: dnf install "
             "gcc; macOS: xcode-select --install), or set CC to one")
def mode() -> str:
    m = os.environ.get("SEQFORMER_KERNEL", "auto").lower()
    if m not in ("auto", "c", "torch", "gpu"):
        raise ValueError(f"SEQFORMER_KERNEL={m!r}; use auto, c, torch or gpu")
    return m


def load_library(compiler: Optional[str] = None, flags: Optional[Sequence[str]] = None,
                 defines: Sequence[str] = ()) -> ctypes.CDLL:
    """Build (or take from the cache) and load the kernel with ``compiler`` (default
    :func:`find_compiler`), ``flags`` (default ``FLAGS``) and ``-D`` ``defines``; raises
    :class:`BuildError`. The result is a separate library: pass it as ``lib=`` to the kernel
    functions; the one :func:`library` returns is unchanged."""
    cc = compiler or find_compiler()
    if cc is None:
        raise BuildError(f"no C compiler found; {INSTALL_C}")
    flags = list(FLAGS if flags is None else flags) + [f"-D{d}" for d in defines]
    lib = ctypes.CDLL(str(compile_library(SOURCE, cc, flags, LIBS)))
    f, i, p = ctypes.c_float, ctypes.c_int64, ctypes.c_void_p
    common: list[type[ctypes._SimpleCData]] = [p, p, p, p, p, p] + [i] * 12 + [ctypes.c_int, f]
    # ..., n_threads, seg_rows (the execution policy's kernel_segment_rows, passed with every call)
    lib.seq_attn_forward.argtypes = common + [p, p, ctypes.c_int, i]
    lib.seq_attn_backward.argtypes = common + [p, p, p, p, p, p, ctypes.c_int, i]
    lib.seq_attn_forward.restype = lib.seq_attn_backward.restype = None
    lib.seq_lsh_codes.argtypes = [p, i, i, i, i, p, ctypes.c_int]
    lib.seq_lsh_sort.argtypes = [p, p, i, i, i, i, ctypes.c_int, p, p, p, ctypes.c_int]
    lib.seq_lsh_codes.restype = lib.seq_lsh_sort.restype = None
    lib.seq_release_buffers.argtypes = []
    lib.seq_release_buffers.restype = None
    return lib


def unavailable_reason() -> Optional[str]:
    """Why :func:`library` returned None: the build error, or the ``SEQFORMER_KERNEL`` setting
    (for skip messages); None when the kernel is loaded."""
    if mode() in ("torch", "gpu"):
        return f"SEQFORMER_KERNEL={mode()}"
    try:
        library()
    except Exception:  # noqa: BLE001 - SEQFORMER_KERNEL=c: the error is the answer
        pass
    return _LIB.error


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library, or None (reference path)."""
    m = mode()
    if m in ("torch", "gpu"):
        return None
    return _LIB.get(required="SEQFORMER_KERNEL=c" if m == "c" else "")


_LIB = LazyLibrary(load_library, "compiled attention kernel",
                   "using the PyTorch path, about 3x slower and with more memory at long inputs", INSTALL_C)


def usable(*tensors: torch.Tensor) -> bool:
    """True when the compiled kernel can take these tensors (CPU, float32) and is available."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return library() is not None


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _args(q, k, v, lay, scale):
    B, L, H, D = q.shape
    G = B * H
    perm = None if lay.perm is None else lay.perm.contiguous()
    buckets = lay.buckets.contiguous()
    u = None if (lay.u is None or lay.rounds == 1) else lay.u.contiguous()
    keep = (perm, buckets, u)  # referenced until the call returns
    args = [_ptr(q), _ptr(k), _ptr(v), _ptr(perm), _ptr(buckets), _ptr(u), lay.rounds, G, H, L, D, lay.chunk,
            lay.back, lay.fwd, lay.band_lo, lay.band_hi, lay.lo, lay.hi, int(lay.self_fallback), float(scale)]
    return args, keep


def _loaded(lib: Optional[ctypes.CDLL]) -> ctypes.CDLL:
    """``lib``, else :func:`library`; a BuildError (not an AttributeError on None) where the kernel is
    unavailable (callers test :func:`usable` first)."""
    lib = lib or library()
    if lib is None:
        raise BuildError(f"the compiled attention kernel is unavailable here (SEQFORMER_KERNEL mode {mode()!r}); "
                         f"test kernel.usable() before calling it")
    return lib


def forward(q: torch.Tensor, k: Optional[torch.Tensor], v: torch.Tensor, lay, scale: float,
            lib: Optional[ctypes.CDLL] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Compiled twin of :func:`~reformer_seq.model.attention.chunked.chunked_attention_forward`, on
    (B, L, H, D) tensors: returns out (B, L, H, D) and lse (B * H, L). ``k=None``: the keys
    are ``F.normalize(q, dim=-1)`` (shared-QK), computed inside. ``lib``: a library from
    :func:`load_library` (default :func:`library`)."""
    q, v = q.contiguous(), v.contiguous()
    k = None if k is None else k.contiguous()
    B, L, H, D = q.shape
    out = torch.empty(B, L, H, D, dtype=torch.float32)
    lse = torch.empty(B * H, L, dtype=torch.float32)
    args, keep = _args(q, k, v, lay, scale)
    _loaded(lib).seq_attn_forward(*args, out.data_ptr(), lse.data_ptr(), torch.get_num_threads(),
                                  current_policy().kernel_segment_rows)
    del keep
    return out, lse


def backward(q, k, v, out, lse, dout, lay, scale, lib: Optional[ctypes.CDLL] = None
             ) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Compiled twin of :func:`~reformer_seq.model.attention.chunked.chunked_attention_backward`, on
    (B, L, H, D) tensors (lse: (B * H, L)). With ``k=None`` (keys normalised from q), dk is None
    and dq includes the keys' gradient."""
    q, v, dout, lse = q.contiguous(), v.contiguous(), dout.contiguous(), lse.contiguous()
    k = None if k is None else k.contiguous()
    B, L, H, D = q.shape
    out = out.contiguous()
    dq, dv = torch.empty_like(q), torch.empty_like(v)  # every row is written (round 0 stores)
    dk = None if k is None else torch.empty_like(k)
    args, keep = _args(q, k, v, lay, scale)
    _loaded(lib).seq_attn_backward(*args, lse.data_ptr(), out.data_ptr(), dout.data_ptr(), dq.data_ptr(),
                                   _ptr(dk), dv.data_ptr(), torch.get_num_threads(),
                                   current_policy().kernel_segment_rows)
    del keep
    return dq, dk, dv


def lsh_codes(proj: torch.Tensor, n_factors: int, n_hashes: int, half: int, lib: Optional[ctypes.CDLL] = None
              ) -> torch.Tensor:
    """Compiled twin of the argmax/concatenation in :func:`~reformer_seq.model.attention.lsh.hash_codes`:
    proj (n, F * R * half) float32 -> codes (R, n) int64."""
    proj = proj.contiguous()
    n = proj.shape[0]
    codes = torch.empty(n_hashes, n, dtype=torch.int64)
    _loaded(lib).seq_lsh_codes(proj.data_ptr(), n, n_factors, n_hashes, half, codes.data_ptr(),
                                     torch.get_num_threads())
    return codes


def lsh_sort(buckets: torch.Tensor, n_real_buckets: torch.Tensor, chunk: int, causal: bool,
             lib: Optional[ctypes.CDLL] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compiled twin of the sort in :func:`~reformer_seq.model.attention.lsh.lsh_layout` (a stable
    counting sort): buckets (R, G, L) int32 -> perm, sorted buckets, window keys u (R, G, L) int32."""
    buckets = buckets.to(torch.int32).contiguous()  # (bucket ids stay far below 2**31)
    R, G, L = buckets.shape
    nb = n_real_buckets.to(torch.int64).contiguous()
    perm, srt, u = (torch.empty(R, G, L, dtype=torch.int32) for _ in range(3))
    _loaded(lib).seq_lsh_sort(buckets.data_ptr(), nb.data_ptr(), R, G, L, chunk, int(causal), perm.data_ptr(),
                              srt.data_ptr(), u.data_ptr(), torch.get_num_threads())
    return perm, srt, u


def release_buffers() -> None:
    """Free the kernel's kept work buffers (an arena reused from call to call, as large as the
    largest call so far: ~0.4 GB after a 1M-token backward). The next call allocates again."""
    if _LIB.lib is not None:
        _LIB.lib.seq_release_buffers()
