"""Per-base score tracks: bits ``-log2 p(base | the bases before it)`` along a genome (``seqformer score``).

Windows are those of :func:`~reformer_seq.tasks.evaluation.likelihood.likelihood` (through
:func:`~reformer_seq.tasks.evaluation.likelihood.iter_likelihood`, the same code): windows of ``window`` bases
overlapping by ``overlap`` (default 1, exactly as ``seqformer evaluate``), each base scored once
from its left context in its window; a record's (or region's) first base has no left context
and no value. So the mean of a track over a record equals ``evaluate``'s bits per base on that
record with the same window. N and other non-ACGT positions get no value; windows inside an
assembly gap (N runs longer than the window) are skipped and the N bases counted.

``rc_average``: each record is also scored on its reverse complement (the same windows applied
to the reverse-complement sequence) and per base the two strands are averaged (base ``i`` with
reverse-complement base ``L-1-i``, the bit of the complementary base); a base scored on one
strand only (a record's first and last base) keeps that strand's value.

Regions (``--region chrom:start-end``, 1-based inclusive as in samtools, or a BED file, 0-based
half-open) are scored as stand-alone sequences: context starts at the region's start.
Overlapping or touching regions of one record are merged first.

Outputs (:func:`write_track`), chosen by suffix, written atomically:

* ``.bedgraph`` / ``.bedgraph.gz``: a ``track`` line, then ``chrom start end value`` (0-based
  half-open, chrom = record id) with values rounded to ``digits`` decimals and runs of equal
  rounded values merged; unscored bases are left out.
* ``.npz``: one float32 array per record (key = record id, length = record length), NaN where
  unscored (outside the regions, N, first bases).
* ``.bw``: bigWig through the optional ``pyBigWig`` package, the same intervals as the bedGraph.
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ...errors import InputError, SeqformerError
from ..evaluation.likelihood import LN2, ModelScorer, ScoringModel, default_window, is_base, iter_likelihood
from ...runtime.files import atomic_write
from ...genome.encoded import EncodedRecord
from ...genome.fasta import open_text
from ...genome.inputs import load_sequences
from ...genome.tokenizers import NucleotideTokenizer
from ...types import PathLike

TRACK_SUFFIXES = (".bedgraph", ".bedgraph.gz", ".npz", ".bw")
Region = tuple[str, int, int]  # (chrom, start, end): 0-based half-open


# ---------------------------------------------------------------------- regions
def parse_region(text: str) -> Region:
    """``chrom:start-end`` (1-based, inclusive, commas allowed) or ``chrom`` -> 0-based half-open.

    ``chrom`` alone means the whole record (end -1 until resolved against the record).
    """
    m = re.fullmatch(r"(.+?)(?::([\d,]+)-([\d,]+))?", text.strip())
    if not m or not m.group(1):
        raise InputError(f"--region {text!r}: expected chrom:start-end (1-based, inclusive), e.g. NC_000913.3:1-5000")
    if m.group(2) is None:
        return m.group(1), 0, -1
    start, end = int(m.group(2).replace(",", "")), int(m.group(3).replace(",", ""))
    if start < 1 or end < start:
        raise InputError(f"--region {text!r}: start must be >= 1 and end >= start (1-based, inclusive)")
    return m.group(1), start - 1, end


def read_bed(path: PathLike) -> list[Region]:
    """The first three columns of a BED file (``track``/``browser``/``#`` lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: BED file not found")
    out = []
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            try:
                chrom, start, end = cols[0], int(cols[1]), int(cols[2])
            except (IndexError, ValueError):
                raise InputError(f"{path}: line {n} is not BED (chrom, start, end): {line.strip()[:60]!r}") from None
            if start < 0 or end <= start:
                raise InputError(f"{path}: line {n}: need 0 <= start < end, got {start} {end}")
            out.append((chrom, start, end))
    if not out:
        raise InputError(f"{path}: no regions in the BED file")
    return out


def resolve_regions(records: Sequence[EncodedRecord], regions: Optional[Sequence[Region]], where: str = "--region"
                    ) -> list[tuple[int, int, int]]:
    """``(record index, start, end)`` sorted and merged per record; every record whole when ``regions`` is None."""
    if regions is None:
        return [(i, 0, len(r)) for i, r in enumerate(records)]
    index = {r.id: i for i, r in enumerate(records)}
    spans: dict[int, list[tuple[int, int]]] = {}
    for chrom, start, end in regions:
        if chrom not in index:
            raise InputError(f"{where}: record {chrom!r} is not in the FASTA (records: "
                             f"{', '.join(list(index)[:8])}{', ...' if len(index) > 8 else ''})")
        L = len(records[index[chrom]])
        end = L if end < 0 else end
        if start >= L or end > L:
            raise InputError(f"{where}: {chrom}:{start + 1}-{end} runs past the end of {chrom} ({L:,} bases)")
        spans.setdefault(index[chrom], []).append((start, end))
    out = []
    for ri in sorted(spans):
        merged: list[list[int]] = []
        for s, e in sorted(spans[ri]):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        out += [(ri, s, e) for s, e in merged]
    return out


# ---------------------------------------------------------------------- scoring
def base_bits(records: Sequence[EncodedRecord], scorer: ScoringModel, window: int, overlap: int = 1,
              batch_size: int = 8, progress: bool = True) -> list[np.ndarray]:
    """Per record, float64 (L,) bits of each base from its left context; NaN where unscored."""
    out = [np.full(len(r), np.nan) for r in records]
    for ri, pos, logp, _ in iter_likelihood(records, scorer, window, batch_size, progress=progress, overlap=overlap):
        out[ri][pos] = -logp / LN2
    return out


def score_tracks(records: Sequence[EncodedRecord], scorer: ScoringModel, window: int, overlap: int = 1,
                 rc_average: bool = False, regions: Optional[Sequence[Region]] = None, batch_size: int = 8,
                 progress: bool = True) -> dict[str, np.ndarray]:
    """Record id -> float32 (L,) bits per base (NaN where unscored); see the module docstring."""
    if scorer.objective != "causal":
        raise SeqformerError("score needs a causal model (bits of each base from the bases before it); this "
                             "checkpoint is a masked model")
    spans = resolve_regions(records, regions)
    pieces = [EncodedRecord(records[ri].id, "", np.asarray(records[ri].ids[s:e])) for ri, s, e in spans]
    bits = base_bits(pieces, scorer, window, overlap, batch_size, progress)
    if rc_average:
        tok = NucleotideTokenizer()
        rc = [EncodedRecord(p.id, "", tok.reverse_complement(p.ids)) for p in pieces]
        rev = [b[::-1] for b in base_bits(rc, scorer, window, overlap, batch_size, progress)]
        bits = [_mean_of_strands(f, r) for f, r in zip(bits, rev)]
    used = sorted({ri for ri, _, _ in spans})
    tracks = {records[ri].id: np.full(len(records[ri]), np.nan, np.float32) for ri in used}
    for (ri, s, e), b in zip(spans, bits):
        tracks[records[ri].id][s:e] = b
    return tracks


def _mean_of_strands(fwd: np.ndarray, rev: np.ndarray) -> np.ndarray:
    both = np.isfinite(fwd) & np.isfinite(rev)
    return np.where(both, (fwd + rev) / 2, np.where(np.isfinite(fwd), fwd, rev))


# ---------------------------------------------------------------------- writing
def track_format(out: PathLike) -> str:
    name = str(out).lower()
    for suffix in TRACK_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise SeqformerError(f"{out}: cannot tell the output format from the name; end it with "
                         f"{', '.join(TRACK_SUFFIXES)}")


def runs(values: np.ndarray, digits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(starts, ends, rounded values)`` of the runs of equal rounded finite values (NaN left out)."""
    v = np.round(values.astype(np.float64), digits)
    ok = np.isfinite(v)
    idx = np.flatnonzero(ok)
    if not idx.size:
        return idx, idx, v[idx]
    new = np.ones(idx.size, bool)
    new[1:] = (np.diff(idx) != 1) | (v[idx[1:]] != v[idx[:-1]])
    starts = idx[new]
    ends = np.append(idx[np.flatnonzero(new)[1:] - 1], idx[-1]) + 1
    return starts, ends, v[starts]


def bedgraph_text(tracks: dict[str, np.ndarray], digits: int = 3, name: str = "seqformer",
                  description: str = "seqformer bits per base") -> str:
    lines = [f'track type=bedGraph name="{name}" description="{description}" visibility=full '
             f'autoScale=on alwaysZero=on']
    for chrom, values in tracks.items():
        s, e, v = runs(values, digits)
        lines += [f"{chrom}\t{a}\t{b}\t{x:.{digits}f}" for a, b, x in zip(s.tolist(), e.tolist(), v.tolist())]
    return "\n".join(lines) + "\n"


def read_bedgraph(path: PathLike) -> dict[str, list[tuple[int, int, float]]]:
    """Intervals per chrom of a bedGraph (plain or gzip): ``(start, end, value)``."""
    path = Path(path)
    out: dict[str, list[tuple[int, int, float]]] = {}
    with open_text(path) as f:
        for line in f:
            if line.startswith(("track", "browser", "#")) or not line.strip():
                continue
            c, s, e, v = line.split("\t")
            out.setdefault(c, []).append((int(s), int(e), float(v)))
    return out


def write_track(tracks: dict[str, np.ndarray], out: PathLike, lengths: dict[str, int], digits: int = 3,
                description: str = "seqformer bits per base") -> Path:
    """Write ``tracks`` to ``out`` (format by suffix, see the module docstring) atomically."""
    out = Path(out)
    fmt = track_format(out)
    if out.is_dir():
        raise SeqformerError(f"--out {out} is a directory; give a file name such as {out / 'bits.bedgraph'}")
    if fmt in (".bedgraph", ".bedgraph.gz"):
        data = bedgraph_text(tracks, digits, name=out.name.split(".")[0], description=description).encode()

        def write(tmp: str) -> None:
            with (gzip.open(tmp, "wb") if fmt.endswith(".gz") else open(tmp, "wb")) as f:
                f.write(data)
    elif fmt == ".npz":
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                arrays: dict[str, Any] = {k: v.astype(np.float32) for k, v in tracks.items()}  # one per record
                np.savez(f, **arrays)
    else:
        write = _bigwig_writer(tracks, lengths, digits)
    atomic_write(out, write, suffix=out.suffix)
    return out


def _bigwig_writer(tracks: dict[str, np.ndarray], lengths: dict[str, int], digits: int):
    try:
        import pyBigWig
    except ImportError:
        raise SeqformerError("writing .bw needs the optional pyBigWig package (pip install pyBigWig); or write "
                             ".bedgraph and convert it with UCSC bedGraphToBigWig") from None

    def write(tmp: str) -> None:
        bw = pyBigWig.open(tmp, "w")
        try:
            bw.addHeader([(c, int(lengths[c])) for c in tracks])
            for chrom, values in tracks.items():
                s, e, v = runs(values, digits)
                if s.size:
                    bw.addEntries([chrom] * s.size, s.tolist(), ends=e.tolist(), values=v.tolist())
        finally:
            bw.close()
    return write


# ---------------------------------------------------------------------- top level
@dataclass
class TrackSummary:
    out: str
    n_records: int
    n_scored: int
    mean_bits: float
    window: int
    overlap: int
    rc_average: bool
    checkpoint: str
    n_skipped_n: int = 0  # bases of the scored spans that are N (assembly gaps), never scored


def score_fasta(fasta: PathLike, checkpoint: PathLike, out: PathLike, window: Optional[int] = None,
                overlap: int = 1, rc_average: bool = False, region: Optional[str] = None,
                regions_bed: Optional[PathLike] = None, batch_size: int = 8, device: str = "auto",
                digits: int = 3, progress: bool = True, strict: bool = False) -> TrackSummary:
    """Score every base of ``fasta`` (or of the regions) with a causal checkpoint and write the track.
    ``strict``: characters outside IUPAC are an error (else N, with a warning)."""
    from ..pretrained import load_pretrained

    track_format(out)  # fail before loading anything
    if region and regions_bed:
        raise SeqformerError("give --region or --regions, not both")
    regions = [parse_region(region)] if region else (read_bed(regions_bed) if regions_bed else None)
    model, tokenizer, info = load_pretrained(checkpoint)
    if getattr(tokenizer, "kind", None) != "nucleotide":
        raise SeqformerError(f"{info['path']}: score needs a nucleotide model")
    scorer = ModelScorer(model, info.get("objective"), device)
    window = int(min(window or default_window(info, scorer.max_len), scorer.max_len))
    records = load_sequences(fasta, tokenizer, strict=strict)
    tracks = score_tracks(records, scorer, window, overlap, rc_average, regions, batch_size, progress)
    lengths = {r.id: len(r) for r in records}
    strands = "both strands averaged" if rc_average else "forward strand"
    write_track(tracks, out, lengths, digits, f"seqformer -log2 p(base | left context), {strands}")
    allv = np.concatenate([t for t in tracks.values()]) if tracks else np.zeros(0)
    ok = np.isfinite(allv)
    n_gap = sum(int((~is_base(records[ri].ids[s:e])).sum()) for ri, s, e in resolve_regions(records, regions))
    return TrackSummary(str(out), len(tracks), int(ok.sum()), float(allv[ok].mean()) if ok.any() else float("nan"),
                        window, overlap, rc_average, info["path"], n_gap)
