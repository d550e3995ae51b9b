"""Sequence embeddings from a trained ReformerLM: pooled (one vector per record) or per position.

The model's final hidden states (:meth:`ReformerLM.encode`, after the last LayerNorm) are the
per-position embeddings. This module turns records of any length into them:

* **Windows.** A record up to ``window`` bases (default: the model's ``max_seq_len``) runs in one
  pass. A longer one is cut into windows of exactly ``window`` bases that overlap by at least
  ``overlap`` (default ``window // 8``); the last window ends at the record's end
  (:func:`plan_windows`). Every base is *owned* by the window whose centre is nearest to it
  (the window where it is most central, so it has the most context on both sides; ties go to
  the later window); per-position output takes each base from its owner.
* **Layers.** ``layer`` N is the output of block N (:meth:`ReformerLM.encode`: the mean of the
  reversible stack's two streams after N blocks, through the final LayerNorm; 0 is the input
  embeddings, the last layer is the model's final output; negative numbers count from the end).
  The default, :data:`DEFAULT_LAYER`, is the one the downstream study picked (README).
* **Pooling.** ``pool="max"`` takes the per-feature maximum over the owned non-N bases (of all
  windows and, with ``rc_average``, both strands). ``pool="mean"`` averages the per-position
  vectors of the owned bases, leaving out ambiguous positions (``N``; :attr:`tokenizer.ambiguous_ids`). For a windowed record this is
  the mean weighted by the number of (non-N) bases each window owns, so the pooled vector is
  exactly the mean of the stitched per-position output over its non-N bases. A record with no
  A/C/G/T at all has no defined mean: its row is NaN and ``pooled_bases`` is 0.
* **Strands.** ``rc_average=True`` also embeds each record's reverse complement (the same window
  plan, applied to the reverse-complement sequence) and averages: per position, forward position
  ``i`` with reverse-complement position ``L-1-i`` (the same base pair); pooled, the two strands'
  means. A sequence and its reverse complement then get the same pooled vector, and per-position
  outputs that are each other's reversal.
* **Batching.** Windows (of consecutive records, both strands) are gathered, sorted by length
  and packed into batches of at most ``batch_size`` windows and ``max_batch_tokens`` tokens,
  padded on the right with a mask (the model is padding-invariant). On CPU one long window per
  batch is fastest, which the token cap gives by default.
* **Inference.** ``model.eval()`` (fixed LSH rotations, no dropout), ``torch.inference_mode``
  (no autograd state: a 1,048,576-base window fits in a few GB), fp32 or bf16 autocast; outputs
  are float32. The same input and checkpoint give the same numbers.

Windowed vs one-pass. A window is embedded on its own, at positions ``0..window-1`` of the
model's (absolute, axial) positional encoding, as in training. So a windowed embedding equals
the one-pass embedding only for a translation-invariant model whose receptive field fits in the
overlap: zero positional encoding and only ``local`` attention layers (receptive field
``depth * local_window`` bases each side; causal: left only), with ``overlap / 2`` larger than it.
With LSH layers there is no such bound: hashing assigns buckets from the content of the whole
input and the number of buckets follows its length, so any base can attend anywhere; windowed
output is then exactly the concatenation of per-window passes, but not the one-pass output.

Output files (:func:`embed_fasta`; :func:`load_embeddings` reads both):

==================  ============================  ==============================================
name                shape, dtype                  meaning
==================  ============================  ==============================================
``ids``             (N,) str                      record ids, in file order
``lengths``         (N,) int64                    record lengths in bases
``embeddings``      (N, dim) float32              ``pool="mean"``/``"max"``: one vector per record
``pooled_bases``    (N,) int64                    ``pool="mean"``/``"max"``: non-N bases pooled per record
``embeddings``      (sum(lengths), dim) float32   ``pool="none"``: per-position vectors, all records
``offsets``         (N+1,) int64                  ``pool="none"``: record i is rows offsets[i]:offsets[i+1]
``info``            JSON string                   checkpoint, window, overlap, pool, rc_average, ...
==================  ============================  ==============================================

``npz`` is an uncompressed zip of ``.npy`` members (``np.load(path)``, no pickle); ``h5`` holds
the same names as datasets (``info`` as an attribute too), chunked, written incrementally.
Per-position vectors never sit in memory as a whole: for ``h5`` they go straight into the
dataset, for ``npz`` into a temporary ``.npy`` file next to the output (needing as much free disk
again as the output) that is streamed into the zip at the end. Every output is written under a
temporary name in the output's folder and renamed into place when complete, so a crash never
leaves a half-written file under the final name.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, SeqformerError
from ..runtime.device import autocast, resolve_device
from ..runtime.files import atomic_path
from ..genome.tokenizers import NucleotideTokenizer, Tokenizer

PathLike = Union[str, os.PathLike]
DEFAULT_LAYER = -1  # the final output; chosen by benchmarks/downstream.py's layer sweep (README)
POOL_MODES = ("mean", "max", "none")
PRECISIONS = ("fp32", "bf16")
FORMATS = ("npz", "h5")
SUFFIX_FORMATS = {".npz": "npz", ".h5": "h5", ".hdf5": "h5", ".hdf": "h5"}
_COPY_BLOCK = 1 << 24  # bytes per read/write when streaming a temporary .npy into the zip


# ---------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Window:
    """One window of a record: it runs on bases ``[start, end)`` and owns ``[keep_start, keep_end)``."""

    start: int
    end: int
    keep_start: int
    keep_end: int


def default_overlap(window: int) -> int:
    """The default overlap between consecutive windows: an eighth of the window."""
    return window // 8


def check_window(window: int, overlap: int, max_seq_len: int) -> None:
    """Raise SeqformerError unless ``1 <= window <= max_seq_len`` and ``0 <= overlap < window``."""
    if window < 1:
        raise SeqformerError(f"--window must be a positive number of bases, got {window}")
    if window > max_seq_len:
        raise SeqformerError(f"--window {window:,} exceeds the checkpoint's max_seq_len {max_seq_len:,}; "
                             f"use --window {max_seq_len} or less (longer records are split into windows)")
    if not 0 <= overlap < window:
        raise SeqformerError(f"--overlap must be in [0, window) = [0, {window:,}), got {overlap:,}; "
                             f"e.g. --overlap {default_overlap(window)} (an eighth of the window)")


def plan_windows(length: int, window: int, overlap: int) -> list[Window]:
    """Windows covering ``[0, length)``: one if ``length <= window``, else windows of exactly
    ``window`` bases starting every ``window - overlap`` bases, the last ending at ``length``.

    Each base is owned by the window whose centre is nearest (ties: the later window), so the
    owned ranges partition ``[0, length)`` in order.
    """
    if length <= window:
        return [Window(0, length, 0, length)]
    stride = window - overlap
    starts = list(range(0, length - window, stride)) + [length - window]
    # Equal-length windows: the nearest centre is the one where the base is most central.
    # Between windows i and i+1 the centres' midpoint is (s_{i+1} + e_i - 1) / 2.
    cuts = [0] + [(starts[i + 1] + starts[i] + window) // 2 for i in range(len(starts) - 1)] + [length]
    return [Window(s, s + window, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


# ---------------------------------------------------------------------- output sinks
class _Sink:
    """Where the engine puts results: per-position rows (global row numbers) and pooled rows."""

    def positions(self, row: int, values: np.ndarray, add: bool) -> None:  # values (n, dim) float32
        raise NotImplementedError

    def pooled(self, rec: int, vector: np.ndarray, count: int) -> None:  # vector (dim,) float32
        raise NotImplementedError


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


# ---------------------------------------------------------------------- the engine
@dataclass
class _Item:
    """One window of one strand of one record (window coordinates are on that strand)."""

    rec: int
    strand: int  # 0 forward, 1 reverse complement
    index: int  # window number within the record
    win: Window

    @property
    def length(self) -> int:
        return self.win.end - self.win.start


@dataclass
class _RecordState:
    remaining: int  # items not yet done
    sums: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (strand, window) -> (dim,) f64
    counts: dict[tuple[int, int], int] = field(default_factory=dict)


class _Engine:
    """Runs windows through the model and hands stitched rows or pooled vectors to a sink."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, pool: str, rc_average: bool,
                 window: Optional[int], overlap: Optional[int], batch_size: int, max_batch_tokens: Optional[int],
                 device: str, precision: str, layer: Optional[int] = None) -> None:
        if pool not in POOL_MODES:
            raise SeqformerError(f"--pool must be one of {', '.join(POOL_MODES)}, got {pool!r}")
        if batch_size < 1:
            raise SeqformerError(f"--batch-size must be >= 1, got {batch_size}")
        max_len = int(model.config.max_seq_len)
        self.window = max_len if window is None else int(window)
        self.overlap = default_overlap(self.window) if overlap is None else int(overlap)
        check_window(self.window, self.overlap, max_len)
        self.device = resolve_device(device)
        autocast(self.device, precision)  # validates
        self.precision = precision
        self.model = model.to(self.device).eval()
        self.tokenizer, self.pool, self.rc_average = tokenizer, pool, rc_average
        self.batch_size = batch_size
        self.max_batch_tokens = max(self.window, max_batch_tokens or 0)
        self.ambiguous = np.zeros(max(tokenizer.vocab_size, 1), dtype=bool)
        self.ambiguous[list(tokenizer.ambiguous_ids)] = True
        self.dim = int(model.config.dim)
        self.layer = model.resolve_layer(DEFAULT_LAYER if layer is None else layer)  # a block count

    # -------------------------------------------------------------- items and batches
    def _items(self, lengths: Sequence[int]) -> Iterator[_Item]:
        strands = (0, 1) if self.rc_average else (0,)
        for rec, L in enumerate(lengths):
            for k, w in enumerate(plan_windows(int(L), self.window, self.overlap)):
                for s in strands:
                    yield _Item(rec, s, k, w)

    def _batches(self, items: Iterator[_Item]) -> Iterator[list[_Item]]:
        """Groups of consecutive items, sorted by length (less padding), cut into batches."""
        lookahead = self.batch_size * 8
        group: list[_Item] = []
        tokens = 0
        for it in items:
            group.append(it)
            tokens += it.length
            if len(group) >= lookahead or tokens >= 8 * self.max_batch_tokens:
                yield from self._cut(group)
                group, tokens = [], 0
        if group:
            yield from self._cut(group)

    def _cut(self, group: list[_Item]) -> Iterator[list[_Item]]:
        group = sorted(group, key=lambda it: -it.length)  # stable: ties keep file order
        batch: list[_Item] = []
        for it in group:
            longest = batch[0].length if batch else it.length
            if batch and (len(batch) >= self.batch_size or longest * (len(batch) + 1) > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(it)
        if batch:
            yield batch

    def _tokens(self, ids: np.ndarray, it: _Item) -> np.ndarray:
        w, L = it.win, len(ids)
        if it.strand == 0:
            return np.asarray(ids[w.start:w.end])
        return self.tokenizer.reverse_complement(np.asarray(ids[L - w.end:L - w.start]))  # RC coords -> forward

    def _forward(self, toks: list[np.ndarray]) -> Tensor:
        """Hidden states (B, Lmax, dim) float32 for a batch of token arrays, padded and masked."""
        B, Lmax = len(toks), max(len(t) for t in toks)
        batch = np.full((B, Lmax), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((B, Lmax), dtype=bool)
        for i, t in enumerate(toks):
            batch[i, :len(t)] = t
            mask[i, :len(t)] = True
        x = torch.from_numpy(batch).to(self.device)
        m = None if mask.all() else torch.from_numpy(mask).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            h = self.model.encode(x, m, layer=self.layer)
        return h.float()

    # -------------------------------------------------------------- running
    def run(self, records: Sequence[np.ndarray], sink: _Sink, progress: bool = False) -> int:
        """Embed ``records`` (token id arrays) into ``sink``. Returns the number of all-N records."""
        from tqdm.auto import tqdm

        lengths = [len(r) for r in records]
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        n_strands = 2 if self.rc_average else 1
        state: dict[int, _RecordState] = {}
        n_windows = {rec: len(plan_windows(L, self.window, self.overlap)) for rec, L in enumerate(lengths)}
        empty = 0
        scale = 0.5 if self.rc_average else 1.0
        bar = tqdm(total=int(offsets[-1]) * n_strands, unit="b", unit_scale=True, disable=not progress,
                   desc="embedding" + (" (both strands)" if self.rc_average else ""), dynamic_ncols=True)
        try:
            for batch in self._batches(self._items(lengths)):
                toks = [self._tokens(records[it.rec], it) for it in batch]
                h = self._forward(toks)
                for i, it in enumerate(batch):
                    w = it.win
                    a, b = w.keep_start - w.start, w.keep_end - w.start  # owned rows, window coords
                    owned = h[i, a:b].cpu().numpy()  # (b - a, dim)
                    if self.pool == "none":
                        L = lengths[it.rec]
                        if it.strand == 0:
                            row, vals = offsets[it.rec] + w.keep_start, owned
                        else:  # RC positions keep_start..keep_end-1 are forward L-1-p: reversed
                            row, vals = offsets[it.rec] + L - w.keep_end, owned[::-1]
                        sink.positions(int(row), vals * np.float32(scale) if self.rc_average else vals,
                                       add=self.rc_average)
                    else:
                        st = state.setdefault(it.rec, _RecordState(remaining=n_windows[it.rec] * n_strands))
                        keep = ~self.ambiguous[toks[i][a:b]]
                        if self.pool == "max":
                            st.sums[(it.strand, it.index)] = owned.max(0, where=keep[:, None], initial=-np.inf)
                        else:
                            st.sums[(it.strand, it.index)] = owned.sum(0, dtype=np.float64, where=keep[:, None])
                        st.counts[(it.strand, it.index)] = int(keep.sum())
                        st.remaining -= 1
                        if st.remaining == 0:
                            empty += self._finish_pooled(it.rec, state.pop(it.rec), n_windows[it.rec], sink)
                    bar.update(b - a)
        finally:
            bar.close()
        return empty

    def _finish_pooled(self, rec: int, st: _RecordState, n_win: int, sink: _Sink) -> int:
        """Sum each strand over its windows in window order (deterministic), then average (or the
        maximum over windows and strands for ``pool="max"``)."""
        strands = (0, 1) if self.rc_average else (0,)
        if self.pool == "max":
            count = sum(st.counts.values()) // len(strands)
            if count == 0:
                sink.pooled(rec, np.full(self.dim, np.nan, np.float32), 0)
                return 1
            sink.pooled(rec, np.max(np.stack(list(st.sums.values())), axis=0).astype(np.float32), count)
            return 0
        per_strand = [sum((st.sums[(s, k)] for k in range(n_win)), np.zeros(self.dim)) for s in strands]
        total = per_strand[0] + per_strand[1] if self.rc_average else per_strand[0]
        count = sum(st.counts[(s, k)] for s in strands for k in range(n_win))
        per_strand_count = count // len(strands)
        if count == 0:
            sink.pooled(rec, np.full(self.dim, np.nan, np.float32), 0)
            return 1
        sink.pooled(rec, (total / count).astype(np.float32), per_strand_count)
        return 0


# ---------------------------------------------------------------------- in-memory API
def _as_ids(seq: Any, tokenizer: Tokenizer) -> np.ndarray:
    if isinstance(seq, (str, bytes, bytearray)):
        return tokenizer.encode(seq)
    if isinstance(seq, torch.Tensor):
        return seq.detach().cpu().numpy().reshape(-1)
    return np.asarray(seq).reshape(-1)


def embed_sequences(model: torch.nn.Module, sequences: Sequence[Any], tokenizer: Optional[Tokenizer] = None, *,
                    pool: str = "mean", rc_average: bool = False, window: Optional[int] = None,
                    overlap: Optional[int] = None, batch_size: int = 16, max_batch_tokens: Optional[int] = None,
                    device: str = "auto", precision: str = "fp32", progress: bool = False, layer: Optional[int] = None
                    ) -> Union[np.ndarray, list[np.ndarray]]:
    """Embed sequences (strings or token id arrays) in memory.

    Returns ``pool="mean"``: (N, dim) float32; ``pool="none"``: a list of (L_i, dim) float32
    arrays. For whole genomes use :func:`embed_fasta`, which writes to disk incrementally.
    The model is put in eval mode and moved to ``device``.
    """
    tokenizer = tokenizer or NucleotideTokenizer()
    recs = [_as_ids(s, tokenizer) for s in sequences]
    for i, r in enumerate(recs):
        if r.size == 0:
            raise InputError(f"sequence #{i + 1} is empty; every sequence needs at least one base")
    eng = _Engine(model, tokenizer, pool, rc_average, window, overlap, batch_size, max_batch_tokens, device, precision,
                  layer)
    total = sum(len(r) for r in recs)
    sink = _MemorySink(len(recs), total, eng.dim, pool)
    eng.run(recs, sink, progress)
    if pool != "none":
        return sink.emb
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in recs])])
    return [sink.emb[offsets[i]:offsets[i + 1]] for i in range(len(recs))]


# ---------------------------------------------------------------------- files
@dataclass
class EmbedSummary:
    """What :func:`embed_fasta` wrote."""

    out: str
    format: str
    n_records: int
    n_bases: int
    dim: int
    pool: str
    rc_average: bool
    window: int
    overlap: int
    device: str
    precision: str
    seconds: float
    empty_records: int  # pooled records without any A/C/G/T (NaN rows)
    checkpoint: str

    @property
    def bases_per_second(self) -> float:
        return self.n_bases / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        """A one-line summary for the CLI."""
        rows = self.n_records if self.pool != "none" else self.n_bases
        what = f"{self.pool}-pooled" if self.pool != "none" else "per-position"
        extra = f"; {self.empty_records} all-N record(s) have NaN rows" if self.empty_records else ""
        return (f"embedded {self.n_records:,} record(s), {self.n_bases:,} bases in {self.seconds:.1f} s "
                f"({self.bases_per_second:,.0f} bases/s, {self.device}, {self.precision}"
                f"{', rc-averaged' if self.rc_average else ''}) -> {self.out}: {what} embeddings "
                f"({rows:,}, {self.dim}) float32{extra}")


def output_format(out: PathLike, format: Optional[str] = None) -> str:
    """``format`` if given, else from ``out``'s suffix (``.npz``; ``.h5``/``.hdf5``)."""
    if format is not None:
        if format not in FORMATS:
            raise SeqformerError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
        return format
    suffix = Path(out).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise SeqformerError(f"{out}: cannot tell the output format from the suffix {suffix or '(none)'!r}; "
                             f"name it .npz or .h5, or pass --format npz|h5")
    return SUFFIX_FORMATS[suffix]


def embed_fasta(fasta: PathLike, checkpoint: PathLike, out: PathLike, *, pool: str = "mean",
                rc_average: bool = False, window: Optional[int] = None, overlap: Optional[int] = None,
                batch_size: int = 16, max_batch_tokens: Optional[int] = None, device: str = "auto",
                precision: str = "fp32", format: Optional[str] = None, progress: bool = True,
                use_cache: bool = True, strict: bool = False, layer: Optional[int] = None) -> EmbedSummary:
    """Embed every record of a FASTA/GenBank file with a checkpoint and write ``out`` atomically.

    ``checkpoint``: a checkpoint folder or a ``seqformer pretrain`` run folder (its best
    checkpoint). See the module docstring for the options and the output layout. ``strict``:
    characters outside IUPAC are an error instead of N (with a warning). Bad input,
    a bad checkpoint or bad options raise :class:`~reformer_seq.errors.SeqformerError`.
    """
    from ..runtime.checkpoint import load_pretrained
    from ..genome.fasta import load_genome

    t0 = time.perf_counter()
    out = Path(out)
    fmt = output_format(out, format)
    if fmt == "h5":
        _import_h5py()
    if out.is_dir():
        raise SeqformerError(f"--out {out} is a directory; give a file name such as {out / 'embeddings.npz'}")
    model, tokenizer, info = load_pretrained(checkpoint, map_location="cpu")
    eng = _Engine(model, tokenizer, pool, rc_average, window, overlap, batch_size, max_batch_tokens, device, precision,
                  layer)
    records = load_genome(fasta, tokenizer, use_cache=use_cache, strict=strict)
    ids = np.array([r.id for r in records])
    lengths = np.array([len(r) for r in records], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    meta = {"checkpoint": info["path"], "fasta": str(fasta), "pool": pool, "rc_average": rc_average,
            "window": eng.window, "overlap": eng.overlap, "precision": precision, "dim": eng.dim, "layer": eng.layer,
            "seqformer_version": _version()}
    sink: Union[_NpzSink, _H5Sink, None] = None
    try:
        with atomic_path(out) as tmp:
            total = int(offsets[-1])
            if fmt == "npz":
                sink = _NpzSink(out.parent, out.name, len(records), total, eng.dim, pool)
            else:
                sink = _H5Sink(tmp, len(records), total, eng.dim, pool)
            empty = eng.run([r.ids for r in records], sink, progress)
            arrays: dict[str, np.ndarray] = {"ids": ids, "lengths": lengths}
            if pool == "none":
                arrays["offsets"] = offsets
            info_json = json.dumps(meta)
            if isinstance(sink, _NpzSink):
                sink.finish(tmp, {**arrays, "info": np.array(info_json)})
            else:
                sink.finish(arrays, info_json)
    finally:
        if sink is not None:
            sink.cleanup()
    return EmbedSummary(out=str(out), format=fmt, n_records=len(records), n_bases=int(offsets[-1]), dim=eng.dim,
                        pool=pool, rc_average=rc_average, window=eng.window, overlap=eng.overlap,
                        device=str(eng.device), precision=precision, seconds=time.perf_counter() - t0,
                        empty_records=empty, checkpoint=info["path"])


def _version() -> str:
    from .. import __version__

    return __version__


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
