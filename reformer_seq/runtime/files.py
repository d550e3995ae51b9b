"""Atomic files and folders: the one way seqformer writes anything a crash must not corrupt.

Everything is first written under a temporary name in the destination's own folder (so the
final step is a same-filesystem rename) and renamed into place only when complete: a ``kill -9``
at any moment leaves either the previous file or the new one, never a half-written mix. On an
error the temporary file or folder is removed and the destination is left as it was.

A folder that replaces an existing one (a checkpoint written again) is swapped in with one
call that exchanges the two paths (Linux ``renameat2(RENAME_EXCHANGE)``, macOS
``renamex_np(RENAME_SWAP)``): at every moment the path holds a complete folder, the old one or
the new one, and a reader never finds it missing. Where neither exists (another OS, or a
filesystem that refuses the exchange, such as some network mounts) the old folder is renamed
aside and the new one renamed into place, which leaves the path empty for the moment between
the two renames.

Temporary files from :func:`tempfile.mkstemp` are private (mode 0600); what is renamed into place
gets the mode an ordinary ``open()`` would have given it (0666 less the umask), so outputs are
readable by whoever could read a file the user made by hand.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..types import PathLike


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting
    it, a process-wide side effect); 0o022 where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _publish_mode(path: Path, folder: bool) -> None:
    try:
        os.chmod(path, (0o777 if folder else 0o666) & ~_umask())
    except OSError:  # a filesystem without modes: nothing to fix
        pass


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary file name next to ``path`` for the block to write; renamed onto ``path``
    when the block succeeds, deleted when it raises. ``suffix`` keeps a file extension that a
    writer looks at (matplotlib picks the format from it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _publish_mode(tmp, folder=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_AT_FDCWD = -100  # linux/fcntl.h: paths relative to the working directory
_RENAME_EXCHANGE = 2  # linux/fs.h; macOS's RENAME_SWAP (sys/stdio.h) is 2 too
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` (two folders) in one atomic step. False where the platform
    or the filesystem has no such call (nothing was changed); OSError for any other failure."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux"):
            call = libc.renameat2  # glibc 2.28+, musl 1.2.2+
            args: tuple = (_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        elif sys.platform == "darwin":
            call, args = libc.renamex_np, (os.fsencode(a), os.fsencode(b), _RENAME_EXCHANGE)
        else:
            return False
    except (OSError, AttributeError):  # no C library to load, or one without the call
        return False
    if call(*args) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, f"could not swap {a} and {b}: {os.strerror(code)}", str(a))


def atomic_write(path: PathLike, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(temporary_name)`` and rename the result onto ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path, suffix) as tmp:
        write(str(tmp))


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def atomic_folder(folder: PathLike, keep_existing: Optional[Callable[[Path], bool]] = None) -> Iterator[Path]:
    """A temporary folder next to ``folder`` for the block to fill; its files are flushed to disk
    and it is renamed onto ``folder`` when the block succeeds, deleted when it raises.

    An existing ``folder`` is exchanged with the new one in one step (:func:`_exchange`; the path
    never goes missing) and then deleted, unless ``keep_existing(folder)`` says it is as good
    (another process made the same thing first): then the new one is dropped.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _publish_mode(tmp, folder=True)
        if not folder.exists():
            try:
                os.rename(tmp, folder)
                return
            except OSError:  # it appeared meanwhile: another process made it
                pass
        if keep_existing is not None and keep_existing(folder):
            return
        if _exchange(tmp, folder):  # tmp now holds the old folder, deleted below
            return
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")  # no exchange here: two renames
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
