"""Encoded genomes: FASTA/GenBank records as token ids, cached as memory-mapped arrays.

:func:`load_genome` encodes every record with a tokenizer (reading with :func:`.fasta.read_records`)
and returns :class:`EncodedRecord` objects whose ``ids`` are read-only memory maps into a cached
``.npy`` file. The cache entry is keyed by the SHA-256 of the file's bytes plus the tokenizer spec and
reading options, so a changed file gets a new entry (the stale one is removed) and an unchanged file
is never parsed twice. Entries are written to a temporary folder and renamed into place (atomic;
safe when several processes build the same entry). The cache folder is ``cache_dir``, else the
``SEQFORMER_CACHE_DIR`` environment variable, else ``~/.cache/seqformer``.

In lenient mode (the default) characters outside IUPAC read as N, and each file with any gives
one :class:`~reformer_seq.errors.InputWarning` with their count per record and the first
position (also when the file comes from the cache). A character outside IUPAC in strict mode
raises :class:`~reformer_seq.errors.InputError` naming the file, the record and the position.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

from ..errors import InputError, InputWarning
from ..runtime.files import atomic_folder
from .tokenizers import InvalidCharacterError, NucleotideTokenizer, Tokenizer

from .fasta import SeqRecordText, check_file, read_records
from ..types import PathLike

CACHE_FORMAT = 2  # bump when the cache layout or encoding changes


# ---------------------------------------------------------------------- encoded records
@dataclass
class EncodedRecord:
    """One encoded record: ``ids`` (L,) uint8 (uint16 for bytes), a read-only memmap when cached.

    ``softmask`` (L,) bool marks lowercase input when loaded with ``keep_softmask=True``.
    Pickling a cached record pickles only the cache path (cheap for DataLoader workers).
    """

    id: str
    description: str
    ids: np.ndarray
    softmask: Optional[np.ndarray] = None
    _source: Optional[tuple[str, int, Optional[str]]] = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __reduce__(self) -> tuple:
        if self._source is None:
            return (EncodedRecord, (self.id, self.description, np.asarray(self.ids),
                                    None if self.softmask is None else np.asarray(self.softmask)))
        tokens, offset, softmask = self._source
        return (_reopen_record, (self.id, self.description, tokens, offset, len(self), softmask))


def _reopen_record(id: str, description: str, tokens: str, offset: int, length: int,
                   softmask: Optional[str]) -> EncodedRecord:
    ids = np.load(tokens, mmap_mode="r")[offset:offset + length]
    sm = None if softmask is None else np.load(softmask, mmap_mode="r")[offset:offset + length]
    return EncodedRecord(id, description, ids, sm, (tokens, offset, softmask))


# ---------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """``$SEQFORMER_CACHE_DIR``, else ``~/.cache/seqformer``."""
    env = os.environ.get("SEQFORMER_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "seqformer"


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_key(content_sha: str, tokenizer: Tokenizer, strict: bool, keep_softmask: bool) -> str:
    """The cache entry key: the file hash combined with everything that changes the encoding."""
    options = json.dumps({"cache_format": CACHE_FORMAT, "tokenizer": tokenizer.spec(), "strict": strict,
                          "softmask": keep_softmask}, sort_keys=True)
    return hashlib.sha256(f"{content_sha}\n{options}".encode()).hexdigest()[:32]


class _NpyWriter:
    """Appends 1-D arrays to a ``.npy`` file whose length is only known at the end.

    The 128-byte header (NPY format 1.0) is written last, over a placeholder; a 1-D shape of up to
    18 digits always fits.
    """

    HEADER = 128

    def __init__(self, path: Path, dtype: npt.DTypeLike) -> None:
        self.path, self.dtype, self.n = path, np.dtype(dtype), 0
        self.f = open(path, "wb")
        self.f.write(b"\0" * self.HEADER)

    def append(self, arr: np.ndarray) -> int:
        offset = self.n
        self.f.write(np.ascontiguousarray(arr, dtype=self.dtype).tobytes())
        self.n += int(arr.shape[0])
        return offset

    def close(self) -> None:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.n,)}
        text = repr(d).encode("latin1")
        pad = self.HEADER - 10 - len(text) - 1
        header = b"\x93NUMPY\x01\x00" + (self.HEADER - 10).to_bytes(2, "little") + text + b" " * pad + b"\n"
        assert len(header) == self.HEADER
        self.f.seek(0)
        self.f.write(header)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def _safe_stem(path: Path) -> str:
    name = path.name
    for ext in (".gz", ".bgz"):
        name = name[: -len(ext)] if name.endswith(ext) else name
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60] or "genome"


def _encode_record(path: Path, i: int, rec: SeqRecordText, tokenizer: Tokenizer, strict: bool,
                   keep_softmask: bool) -> tuple[np.ndarray, Optional[np.ndarray], tuple[int, int]]:
    """Record #``i`` encoded: ids (L,), softmask (L,) or None, and (characters outside IUPAC, first
    position) that lenient mode read as N; strict mode raises on the first."""
    try:
        if keep_softmask:
            ids, mask = tokenizer.encode_with_softmask(rec.sequence, strict=strict)
        else:
            ids, mask = tokenizer.encode(rec.sequence, strict=strict), None
    except InvalidCharacterError as e:
        where = f"{path}: record {rec.id!r} (#{i + 1})"
        raise InputError(f"{where}: {e}", cli_message=f"{where}: {e.for_cli()}") from None
    return ids, mask, ((0, -1) if strict else tokenizer.invalid_characters(rec.sequence))


def _encode_into(path: Path, tokenizer: Tokenizer, strict: bool, keep_softmask: bool, folder: Path,
                 format: Optional[str]) -> tuple[list[dict[str, Any]], list[list]]:
    """Parse and encode every record into ``folder/tokens.npy`` (and ``softmask.npy``); returns
    the index and the ``[id, count, first position]`` of records with characters outside IUPAC."""
    dtype = np.uint8 if tokenizer.vocab_size <= 256 else np.uint16
    tokens = _NpyWriter(folder / "tokens.npy", dtype)
    soft = _NpyWriter(folder / "softmask.npy", np.bool_) if keep_softmask else None
    index, invalid = [], []
    try:
        for i, rec in enumerate(read_records(path, format)):
            ids, mask, (n_bad, first) = _encode_record(path, i, rec, tokenizer, strict, keep_softmask)
            if soft is not None:
                assert mask is not None  # keep_softmask: _encode_record returned the mask
                soft.append(mask)
            offset = tokens.append(ids)
            index.append({"id": rec.id, "description": rec.description, "offset": offset, "length": len(ids)})
            if n_bad:
                invalid.append([rec.id, n_bad, first])
    finally:
        tokens.close()
        if soft is not None:
            soft.close()
    return index, invalid


def _warn_invalid(path: Path, invalid: list[list]) -> None:
    """One warning per file: how many characters outside IUPAC each record had, and where the first was."""
    if not invalid:
        return
    total = sum(n for _, n, _ in invalid)
    parts = [f"{rid!r} {n:,} (first at position {first + 1:,})" for rid, n, first in invalid[:5]]
    more = f" and {len(invalid) - 5:,} more records" if len(invalid) > 5 else ""
    head = (f"{path}: {total:,} characters outside IUPAC read as N (lenient mode) in {len(invalid):,} record(s): "
            f"{', '.join(parts)}{more}; check the file, or pass")
    warnings.warn(InputWarning(f"{head} strict=True (config data.strict: true) to make this an error",
                               cli_message=f"{head} --strict to make this an error"), stacklevel=3)


def _load_entry(folder: Path) -> Optional[tuple[list[EncodedRecord], list[list]]]:
    """The records of a complete cache entry and its ``invalid`` list (records with characters
    outside IUPAC), or None when it is missing or damaged."""
    try:
        meta = json.loads((folder / "index.json").read_text())
        tokens_path = str(folder / "tokens.npy")
        tokens = np.load(tokens_path, mmap_mode="r")
        soft_path = str(folder / "softmask.npy") if meta["softmask"] else None
        soft = np.load(soft_path, mmap_mode="r") if soft_path else None
        if tokens.shape != (meta["total"],) or (soft is not None and soft.shape != tokens.shape):
            return None
        return [EncodedRecord(r["id"], r["description"], tokens[r["offset"]:r["offset"] + r["length"]],
                              None if soft is None else soft[r["offset"]:r["offset"] + r["length"]],
                              (tokens_path, r["offset"], soft_path))
                for r in meta["records"]], meta["invalid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_stale(root: Path, source: str, sha: str) -> None:
    """Delete entries built from an older version of the same path (content hash differs)."""
    for index in root.glob("*/index.json"):
        try:
            meta = json.loads(index.read_text())
            if meta.get("source") == source and meta.get("sha256") != sha:
                shutil.rmtree(index.parent, ignore_errors=True)
        except (OSError, ValueError):
            continue


def _build_entry(path: Path, root: Path, folder: Path, key: str, sha: str, tokenizer: Tokenizer,
                 strict: bool, keep_softmask: bool, format: Optional[str]) -> None:
    """Write the entry in a temporary folder next to ``folder`` and rename it into place."""
    with atomic_folder(folder, keep_existing=lambda f: _load_entry(f) is not None) as tmp:
        index, invalid = _encode_into(path, tokenizer, strict, keep_softmask, tmp, format)
        meta = {"cache_format": CACHE_FORMAT, "source": str(path.resolve()), "sha256": sha,
                "tokenizer": tokenizer.spec(), "strict": strict, "softmask": keep_softmask,
                "total": sum(r["length"] for r in index), "records": index, "invalid": invalid}
        (tmp / "index.json").write_text(json.dumps(meta))
    _remove_stale(root, str(path.resolve()), sha)


def _encode_in_memory(path: Path, tokenizer: Tokenizer, strict: bool, keep_softmask: bool,
                      format: Optional[str]) -> list[EncodedRecord]:
    out, invalid = [], []
    for i, rec in enumerate(read_records(path, format)):
        ids, mask, (n_bad, first) = _encode_record(path, i, rec, tokenizer, strict, keep_softmask)
        out.append(EncodedRecord(rec.id, rec.description, ids, mask))
        if n_bad:
            invalid.append([rec.id, n_bad, first])
    _warn_invalid(path, invalid)
    return out


def load_genome(path: PathLike, tokenizer: Optional[Tokenizer] = None, cache_dir: Optional[PathLike] = None,
                strict: bool = False, keep_softmask: bool = False, use_cache: bool = True,
                format: Optional[str] = None) -> list[EncodedRecord]:
    """Encode every record of a FASTA/GenBank file; cached as memory-mapped ``.npy`` by content hash.

    Returns one :class:`EncodedRecord` per record, in file order; ``ids`` has shape (L,). The
    first call parses and encodes (and writes the cache); later calls on an unchanged file only
    hash it and map the cached arrays. ``use_cache=False`` (or an unwritable cache folder, with a
    warning) encodes in memory. ``tokenizer`` defaults to :class:`NucleotideTokenizer`.
    """
    path = Path(path)
    tokenizer = tokenizer or NucleotideTokenizer()
    check_file(path)
    if not use_cache:
        return _encode_in_memory(path, tokenizer, strict, keep_softmask, format)
    sha = file_sha256(path)
    key = cache_key(sha, tokenizer, strict, keep_softmask)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = root / "genomes"
    folder = root / f"{_safe_stem(path)}-{key}"
    entry = _load_entry(folder)
    if entry is not None:
        _warn_invalid(path, entry[1])
        return entry[0]
    try:
        _build_entry(path, root, folder, key, sha, tokenizer, strict, keep_softmask, format)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC):
            raise
        warnings.warn(f"cannot write the genome cache in {root} ({e.strerror}); encoding {path.name} in memory. "
                      f"Set SEQFORMER_CACHE_DIR to a writable folder to cache it", stacklevel=2)
        return _encode_in_memory(path, tokenizer, strict, keep_softmask, format)
    entry = _load_entry(folder)
    if entry is None:
        raise InputError(f"{path}: the cache entry {folder} could not be read back after writing; "
                         f"delete it and retry, or pass use_cache=False")
    _warn_invalid(path, entry[1])
    return entry[0]
