"""Building and loading compiled code: the one compile-and-load helper for seqformer's C and C++.

Two pieces are compiled on first use with the system compiler and loaded with ctypes: the
attention kernel (:mod:`reformer_seq.model.attention.kernel`, C) and the CPU buffer cache
(:mod:`.block_cache`, C++ against torch's headers). Both go through :func:`compile_library`
(a shared library cached under ``$SEQFORMER_CACHE_DIR/kernels``, default
``~/.cache/seqformer/kernels``, keyed by the source, the compiler's version, the flags and, for
``-march=native``, what that means to this compiler on this machine; a failed build is remembered
by a ``.failed`` marker with the same key) and :class:`LazyLibrary` (build once per process on
first use; on failure one warning that says what to install, and the caller's slower path).
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
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

from .files import atomic_path, atomic_write_text


class BuildError(RuntimeError):
    """A compiled piece could not be built: no compiler, a compiler error, or one remembered."""


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


@functools.cache
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
    with atomic_path(out, suffix=".so") as tmp:
        try:
            res = subprocess.run([compiler, *flags, "-o", str(tmp), str(source), *libs], capture_output=True, text=True)
        except OSError as e:
            raise BuildError(f"cannot run the compiler {compiler} ({e.strerror})") from None
        if res.returncode != 0:
            errors = [ln for ln in res.stderr.splitlines() if "error" in ln] or res.stderr.strip().splitlines()
            msg = f"{compiler} ({compiler_signature(compiler).strip() or '?'}) failed on {source.name}: " + \
                  " | ".join(errors[:3])[:600]
            atomic_write_text(failed, msg + "\n")
            raise BuildError(msg)
    return out




class LazyLibrary:
    """A compiled library built on first :meth:`get` and kept for the process.

    ``build`` compiles and loads it (raising on any problem); ``what`` names it and ``fallback``
    says what runs instead, for the one warning a failed build gives; ``install`` says what to
    install. With ``required`` (the reason, e.g. an environment setting) a failed build raises
    instead of warning.
    """

    def __init__(self, build: Callable[[], ctypes.CDLL], what: str, fallback: str, install: str):
        self.build, self.what, self.fallback, self.install = build, what, fallback, install
        self.lib: Optional[ctypes.CDLL] = None
        self.tried = False
        self.error: Optional[str] = None  # why it is unavailable (None: loaded, or not tried yet)

    def get(self, required: str = "") -> Optional[ctypes.CDLL]:
        """The loaded library, or None when it cannot be built here (after one warning)."""
        if not self.tried:
            self.tried = True
            try:
                self.lib = self.build()
            except Exception as e:  # noqa: BLE001 - any build problem means: use the fallback
                self.lib, self.error = None, str(e)
                if required:
                    raise
                warnings.warn(f"seqformer: {self.what} unavailable ({e}); {self.fallback}; {self.install}",
                              stacklevel=2)
        if self.lib is None and required:
            raise BuildError(f"{required} but the {self.what} is unavailable: {self.error}")
        return self.lib
