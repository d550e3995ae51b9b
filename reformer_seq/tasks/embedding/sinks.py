"""Where embeddings go: per-position and pooled rows into memory, a ``.npz`` (per-position rows
through a temporary ``.npy`` streamed into the zip) or an HDF5 file; and reading an output back."""
from __future__ import annotations

import abc
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...errors import InputError, SeqformerError
from ...types import PathLike

_COPY_BLOCK = 1 << 24  # bytes per read/write when streaming a temporary .npy into the zip


class _Sink(abc.ABC):
    """Where the engine puts results: per-position rows (global row numbers) and pooled rows."""

    @abc.abstractmethod
    def positions(self, row: int, values: np.ndarray, add: bool) -> None:  # values (n, dim) float32
        """Write (``add``: add to) rows ``row .. row + n`` of the per-position output."""

    @abc.abstractmethod
    def pooled(self, rec: int, vector: np.ndarray, count: int) -> None:  # vector (dim,) float32
        """Record ``rec``'s pooled vector, pooled over ``count`` bases."""


class _MemorySink(_Sink):
    """Everything in RAM: for :func:`embed_sequences` (small inputs, tests)."""

    def __init__(self, n: int, total: int, dim: int, pool: str) -> None:
        self.emb = np.zeros((n if pool != "none" else total, dim), np.float32)
        self.counts = np.zeros(n, np.int64)

    def positions(self, row: int, values: np.ndarray, add: bool) -> None:
        if add:
            self.emb[row:row + len(values)] += values
        else:
            self.emb[row:row + len(values)] = values

    def pooled(self, rec: int, vector: np.ndarray, count: int) -> None:
        self.emb[rec] = vector
        self.counts[rec] = count


class _NpyRows:
    """A (rows, dim) float32 ``.npy`` file written in place with ``pwrite`` (not memory-mapped, so
    rows written do not stay in this process's resident set)."""

    def __init__(self, path: Path, rows: int, dim: int) -> None:
        self.path, self.rows, self.dim = path, rows, dim
        self.row_bytes = 4 * dim
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
            self.header = f.tell()
            f.truncate(self.header + rows * self.row_bytes)  # sparse zeros
        self.fd = os.open(path, os.O_RDWR)

    def write(self, row: int, values: np.ndarray, add: bool) -> None:
        values = np.ascontiguousarray(values, dtype="<f4")
        offset = self.header + row * self.row_bytes
        if add:
            old = np.frombuffer(os.pread(self.fd, values.nbytes, offset), dtype="<f4").reshape(values.shape)
            values = old + values
        os.pwrite(self.fd, values.tobytes(), offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _NpzSink(_Sink):
    """``.npz`` output: pooled rows in RAM, per-position rows in a temporary ``.npy`` file."""

    def __init__(self, tmp_dir: Path, stem: str, n: int, total: int, dim: int, pool: str) -> None:
        self.pool = pool
        self.rows: Optional[_NpyRows] = None
        if pool == "none":
            fd, name = tempfile.mkstemp(prefix=f".{stem}.positions-", suffix=".npy", dir=tmp_dir)
            os.close(fd)
            self.rows = _NpyRows(Path(name), total, dim)
        else:
            self.emb = np.zeros((n, dim), np.float32)
            self.counts = np.zeros(n, np.int64)

    def positions(self, row: int, values: np.ndarray, add: bool) -> None:
        assert self.rows is not None
        self.rows.write(row, values, add)

    def pooled(self, rec: int, vector: np.ndarray, count: int) -> None:
        self.emb[rec] = vector
        self.counts[rec] = count

    def finish(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        """Write the zip to ``path`` (a temporary name): ``arrays`` plus the embeddings."""
        with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            def member(name: str, arr: np.ndarray) -> None:
                with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.asarray(arr), allow_pickle=False)

            for name, arr in arrays.items():
                member(name, arr)
            if self.rows is None:
                member("embeddings", self.emb)
                member("pooled_bases", self.counts)
            else:
                self.rows.close()
                with open(self.rows.path, "rb") as src, zf.open("embeddings.npy", "w", force_zip64=True) as out:
                    shutil.copyfileobj(src, out, _COPY_BLOCK)
            f.flush()
            os.fsync(f.fileno())

    def cleanup(self) -> None:
        if self.rows is not None:
            self.rows.close()
            self.rows.path.unlink(missing_ok=True)


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise SeqformerError("--format h5 needs h5py, which is not installed; pip install h5py "
                             "(or pip install 'seqformer[h5]'), or write .npz") from None
    return h5py


class _H5Sink(_Sink):
    """HDF5 output: datasets created up front (chunked) and filled as windows finish."""

    def __init__(self, path: Path, n: int, total: int, dim: int, pool: str) -> None:
        h5py = _import_h5py()
        self.f = h5py.File(path, "w")
        rows = n if pool != "none" else total
        chunk_rows = max(1, min(rows, max(1, (1 << 21) // (4 * dim))))  # ~2 MB chunks
        self.emb = self.f.create_dataset("embeddings", shape=(rows, dim), dtype="<f4", chunks=(chunk_rows, dim),
                                         fillvalue=0.0)
        self.counts = self.f.create_dataset("pooled_bases", shape=(n,), dtype="<i8") if pool != "none" else None

    def positions(self, row: int, values: np.ndarray, add: bool) -> None:
        sl = slice(row, row + len(values))
        self.emb[sl] = (self.emb[sl] + values) if add else values

    def pooled(self, rec: int, vector: np.ndarray, count: int) -> None:
        self.emb[rec] = vector
        assert self.counts is not None
        self.counts[rec] = count

    def finish(self, arrays: dict[str, np.ndarray], info: str) -> None:
        h5py = _import_h5py()
        for name, arr in arrays.items():
            if name == "ids":
                self.f.create_dataset("ids", data=[str(x) for x in arr], dtype=h5py.string_dtype("utf-8"))
            else:
                self.f.create_dataset(name, data=arr)
        self.f.attrs["info"] = info
        self.f.close()

    def cleanup(self) -> None:
        try:
            self.f.close()
        except Exception:  # already closed
            pass


def load_embeddings(path: PathLike) -> dict[str, Any]:
    """Read an ``embed`` output (npz or h5) into a dict of arrays (``info`` parsed from JSON).

    Loads everything into memory; for large per-position HDF5 files open them with h5py instead.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such embeddings file")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"PK"):
        with np.load(path, allow_pickle=False) as z:
            d: dict[str, Any] = {k: z[k] for k in z.files}
        d["info"] = json.loads(str(d["info"])) if "info" in d else {}
        return d
    if magic == b"\x89HDF\r\n\x1a\n":
        h5py = _import_h5py()
        with h5py.File(path, "r") as f:
            d = {k: f[k][()] for k in f.keys()}
            d["ids"] = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in d["ids"]])
            d["info"] = json.loads(f.attrs.get("info", "{}"))
        return d
    raise InputError(f"{path}: neither an .npz (zip) nor an HDF5 file; expected the output of `seqformer embed`")
