"""The compiled CPU kernel of chunked attention: built on first use, loaded with ctypes.

``csrc/seqformer_kernels.c`` is plain C99 with GCC/Clang vector extensions (no torch headers, no
OpenMP): it compiles in about a second with the system C compiler (GCC 9 or newer, or clang;
``CC`` chooses) into a shared library cached under ``$SEQFORMER_CACHE_DIR/kernels`` (default
``~/.cache/seqformer/kernels``). It is built with ``-march=native``, so the cache key holds the
source, the compiler's version, the flags and what ``-march=native`` means to that compiler on
this machine (the target flags it expands to, asked once per process), on any architecture.

If no compiler is available or the build fails, one warning says what failed and what to
install, and the pure-PyTorch reference in :mod:`.chunked_attention` is used instead (the same
results, about 3x slower at 64K tokens). A failed build is remembered by a ``.failed`` marker
beside where the library would be (same key), so later processes do not retry it; delete the
marker, or change the compiler, to try again.

``SEQFORMER_KERNEL=torch`` forces the reference, ``SEQFORMER_KERNEL=c`` makes a failed build an
error, and the default ``auto`` uses the kernel when it builds. :func:`load_library` builds
and loads a copy with other flags or another compiler (for tests) without touching the one the
library uses; the kernel functions take it as ``lib=``.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

SOURCE = Path(__file__).resolve().parent / "csrc" / "seqformer_kernels.c"
# -ffp-contract=fast: -std=c99 alone turns off fused multiply-adds (ISO C), which made every
# a * b + c two instructions; fused, the forward is ~11% and the backward ~5% faster at 64K tokens.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=fast", "-shared", "-fPIC", "-std=c99", "-pthread"]
LIBS = ["-lm"]
# what a failed build's warning asks for
INSTALL_C = ("install a C compiler, GCC 9 or newer or clang (Debian/Ubuntu: apt install gcc; Fedora: dnf install "
             "gcc; macOS: xcode-select --install), or set CC to one")
_lib: Optional[ctypes.CDLL] = None
_tried = False
_error: Optional[str] = None  # why the kernel is unavailable (None: available, or not tried yet)


class BuildError(RuntimeError):
    """A compiled piece could not be built: no compiler, a compiler error, or one remembered."""


def mode() -> str:
    m = os.environ.get("SEQFORMER_KERNEL", "auto").lower()
    if m not in ("auto", "c", "torch"):
        raise ValueError(f"SEQFORMER_KERNEL={m!r}; use auto, c or torch")
    return m


def _cache_dir() -> Path:
    base = os.environ.get("SEQFORMER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "seqformer")
    return Path(base) / "kernels"


def find_compiler(cxx: bool = False) -> Optional[str]:
    """``$CC`` (``$CXX``), else the first of cc, gcc, clang (c++, g++, clang++) on the PATH."""
    if cxx:
        return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


_PAIRED = ("-target-cpu", "-target-feature", "-tune-cpu", "-triple", "--param")  # clang -cc1: flag value


def _expanded_target(verbose: str) -> str:
    """The target options in a ``cc -march=native -E -v`` log: GCC's cc1 line spells out
    ``-march=<cpu> -m<feature> -mno-<feature> ...``, clang's ``-cc1`` line ``-target-cpu <cpu>
    -target-feature +<feature> ...``. Empty when neither is there."""
    for line in verbose.splitlines():
        if "cc1" not in line or "native" in line.split("cc1", 1)[1]:
            continue
        try:
            tokens = shlex.split(line)
        except ValueError:
            tokens = line.split()
        keep, i = [], 0
        while i < len(tokens):
            tok = tokens[i]
            if tok in _PAIRED and i + 1 < len(tokens):
                keep += tokens[i:i + 2]
                i += 2
                continue
            if tok.startswith(("-m", "--param")):
                keep.append(tok)
            i += 1
        if any(t.startswith(("-march=", "-mcpu=")) or t == "-target-cpu" for t in keep):
            return " ".join(keep)
    return ""


def _proc_cpu_flags() -> str:
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        return platform.processor()


@functools.lru_cache(maxsize=None)
def compiler_signature(compiler: str, flags: tuple[str, ...] = ()) -> str:
    """The compiler's ``--version`` line and, when ``flags`` hold ``-march=native`` (or
    ``-mcpu=native``), what that means to this compiler here: the target options it expands to
    (``cc -march=native -E -v``; GCC's ``-Q --help=target`` where that says nothing), falling
    back to the CPU's feature list. Asked once per process and compiler."""

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)

    try:
        version = (run([compiler, "--version"]).stdout.strip().splitlines() or [""])[0]
    except (OSError, subprocess.SubprocessError):
        version = "?"
    native = [f for f in flags if f.endswith("=native")]
    if not native:
        return version
    target = ""
    try:
        target = _expanded_target(run([compiler, *native, "-E", "-v", "-x", "c", "-"]).stderr)
        if not target:
            res = run([compiler, *native, "-Q", "--help=target"])
            target = res.stdout if res.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{version}\n{platform.machine()}\n{target or _proc_cpu_flags()}"


def compile_library(source: Path, compiler: str, flags: Sequence[str], libs: Sequence[str],
                    key_extra: str = "") -> Path:
    """Compile ``source`` into a shared library cached under the kernel cache directory, keyed
    by the source, the compiler (its version and, for ``-march=native``, the target it means
    here: :func:`compiler_signature`), the flags and ``key_extra``; returns its path. The file
    appears atomically, so concurrent builders never load a half-written library. A compiler
    error is remembered in a ``.failed`` file with the same key and raised again (as
    :class:`BuildError`) without compiling until that file is deleted."""
    src = source.read_bytes()
    recipe = "\n".join([compiler, *flags, *libs, compiler_signature(compiler, tuple(flags)), key_extra]).encode()
    key = hashlib.sha256(src + recipe).hexdigest()[:16]
    out = _cache_dir() / f"lib{source.stem}-{key}.so"
    failed = out.with_suffix(".failed")
    if out.is_file():
        return out
    if failed.is_file():
        raise BuildError(f"{failed.read_text().strip()} [remembered from an earlier attempt: delete {failed} "
                         f"to try again]")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        try:
            res = subprocess.run([compiler, *flags, "-o", tmp, str(source), *libs], capture_output=True, text=True)
        except OSError as e:
            raise BuildError(f"cannot run the compiler {compiler} ({e.strerror})") from None
        if res.returncode != 0:
            errors = [ln for ln in res.stderr.splitlines() if "error" in ln] or res.stderr.strip().splitlines()
            msg = f"{compiler} ({compiler_signature(compiler).strip() or '?'}) failed on {source.name}: " + \
                  " | ".join(errors[:3])[:600]
            fd2, tmp2 = tempfile.mkstemp(suffix=".failed", dir=out.parent)
            with os.fdopen(fd2, "w") as f:
                f.write(msg + "\n")
            os.replace(tmp2, failed)
            raise BuildError(msg)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


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
    common = [p, p, p, p, p, p] + [i] * 12 + [ctypes.c_int, f]
    lib.seq_attn_forward.argtypes = common + [p, p, ctypes.c_int]
    lib.seq_attn_backward.argtypes = common + [p, p, p, p, p, p, ctypes.c_int]
    lib.seq_attn_forward.restype = lib.seq_attn_backward.restype = None
    lib.seq_lsh_codes.argtypes = [p, i, i, i, i, p, ctypes.c_int]
    lib.seq_lsh_sort.argtypes = [p, p, i, i, i, i, ctypes.c_int, p, p, p, ctypes.c_int]
    lib.seq_lsh_codes.restype = lib.seq_lsh_sort.restype = None
    lib.seq_release_buffers.argtypes = []
    lib.seq_release_buffers.restype = None
    lib.seq_set_segment_rows.argtypes = [i]
    lib.seq_set_segment_rows.restype = i
    return lib


def unavailable_reason() -> Optional[str]:
    """Why :func:`library` returned None: the build error, or the ``SEQFORMER_KERNEL`` setting
    (for skip messages); None when the kernel is loaded."""
    if mode() == "torch":
        return "SEQFORMER_KERNEL=torch"
    try:
        library()
    except Exception:  # noqa: BLE001 - SEQFORMER_KERNEL=c: the error is the answer
        pass
    return _error


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library, or None (reference path)."""
    global _lib, _tried, _error
    m = mode()
    if m == "torch":
        return None
    if not _tried:
        _tried = True
        try:
            _lib = load_library()
        except Exception as e:  # noqa: BLE001 - any build problem means: use the reference
            _lib, _error = None, str(e)
            if m == "c":
                raise
            warnings.warn(f"seqformer: compiled attention kernel unavailable ({e}); using the PyTorch path, "
                          f"about 3x slower and with more memory at long inputs; {INSTALL_C}")
    if _lib is None and m == "c":
        raise BuildError(f"SEQFORMER_KERNEL=c but the compiled kernel is unavailable: {_error}")
    return _lib


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
    (lib or library()).seq_attn_forward(*args, out.data_ptr(), lse.data_ptr(), torch.get_num_threads())
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
    (lib or library()).seq_attn_backward(*args, lse.data_ptr(), out.data_ptr(), dout.data_ptr(), dq.data_ptr(),
                                _ptr(dk), dv.data_ptr(), torch.get_num_threads())
    del keep
    return dq, dk, dv


def lsh_codes(proj: torch.Tensor, n_factors: int, n_hashes: int, half: int, lib: Optional[ctypes.CDLL] = None
              ) -> torch.Tensor:
    """Compiled twin of the argmax/concatenation in :func:`~reformer_seq.model.attention.lsh.hash_codes`:
    proj (n, F * R * half) float32 -> codes (R, n) int64."""
    proj = proj.contiguous()
    n = proj.shape[0]
    codes = torch.empty(n_hashes, n, dtype=torch.int64)
    (lib or library()).seq_lsh_codes(proj.data_ptr(), n, n_factors, n_hashes, half, codes.data_ptr(),
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
    (lib or library()).seq_lsh_sort(buckets.data_ptr(), nb.data_ptr(), R, G, L, chunk, int(causal), perm.data_ptr(),
                           srt.data_ptr(), u.data_ptr(), torch.get_num_threads())
    return perm, srt, u


def release_buffers() -> None:
    """Free the kernel's kept work buffers (an arena reused from call to call, as large as the
    largest call so far: ~0.4 GB after a 1M-token backward). The next call allocates again."""
    if _lib is not None:
        _lib.seq_release_buffers()


def set_segment_rows(n: int) -> int:
    """Queries per segment of a hash round's sorted order (default 2**18): the kernel's work
    buffers hold one segment, not the whole round. Returns the previous value; for tests."""
    lib = library()
    if lib is None:
        raise RuntimeError("the compiled kernel is not available")
    return int(lib.seq_set_segment_rows(int(n)))
