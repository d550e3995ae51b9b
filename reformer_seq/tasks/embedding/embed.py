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
  The default, :data:`DEFAULT_LAYER`, is the one the downstream study picked (docs/studies.md).
* **Pooling.** ``pool="max"`` takes the per-feature maximum over the owned non-N bases (of all
  windows and, with ``rc_average``, both strands). ``pool="mean"`` averages the per-position
  vectors of the owned bases, leaving out ambiguous positions (``N``; :attr:`tokenizer.ambiguous_ids`). For a windowed
  record this is the mean weighted by the number of (non-N) bases each window owns, so the pooled vector is
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ...errors import SeqformerError
from ...runtime.files import atomic_path
from .engine import _Engine
from .plan import FORMATS, SUFFIX_FORMATS
from .sinks import _H5Sink, _NpzSink, _import_h5py
from ...types import PathLike

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
    from ..pretrained import load_pretrained
    from ...genome.inputs import describe_inputs, load_sequences

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
    records = load_sequences(fasta, tokenizer, use_cache=use_cache, strict=strict)
    ids = np.array([r.id for r in records])
    lengths = np.array([len(r) for r in records], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    meta = {"checkpoint": info["path"], "fasta": describe_inputs(fasta), "pool": pool, "rc_average": rc_average,
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
    from ...version import __version__

    return __version__


