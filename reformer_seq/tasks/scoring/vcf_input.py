"""Reading the variants of a VCF/BCF for ``score-variants``: one :class:`Allele` per ALT.

The file is read with pysam (htslib: plain, bgzipped or BCF, any header). A record htslib
refuses is diagnosed again from the text (:func:`bad_record`), so the error names its line and
field; VCF contigs missing from the reference are reported together, with near misses.
"""
from __future__ import annotations

import difflib
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...errors import InputError
from ...types import PathLike


@dataclass
class Allele:
    """One ALT of one VCF record and its scores (bits; NaN = not scored)."""

    row: int  # the record's index in the VCF
    chrom: str
    pos: int  # 1-based, as in the VCF
    id: str
    ref: str
    alt: str
    llr_forward: float = math.nan
    llr_reverse: float = math.nan
    markov: list[float] = field(default_factory=lambda: [math.nan, math.nan])
    notes: list[tuple[str, str]] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)  # other baselines' [forward, reverse] scores

    @property
    def scored(self) -> bool:
        return not any(code != "near_end" for code, _ in self.notes)

    def llr(self, strands: int) -> float:
        return _mean([self.llr_forward, self.llr_reverse][:strands])

    def llr_markov(self, strands: int) -> float:
        return _mean(self.markov[:strands])

    def llr_extra(self, name: str, strands: int) -> float:
        return _mean(self.extra.get(name, [math.nan, math.nan])[:strands])

    def note_text(self) -> str:
        return "; ".join(text for _, text in self.notes)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if all(math.isfinite(v) for v in values) else math.nan


# ---------------------------------------------------------------------- reading
@contextmanager
def quiet_htslib():
    """Silence htslib's stderr warnings (e.g. contigs missing from a VCF header, which are fine here)."""
    import pysam

    old = pysam.set_verbosity(0)
    try:
        yield
    finally:
        pysam.set_verbosity(old)


def open_vcf(path: PathLike):
    """A pysam ``VariantFile`` (VCF, bgzipped VCF or BCF), or a clear error; use it under :func:`quiet_htslib`."""
    import pysam

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: VCF not found")
    try:
        return pysam.VariantFile(str(path))
    except NotImplementedError:  # htslib reads gzip only through bgzip's blocks
        raise InputError(f"{path}: compressed with plain gzip; recompress it with bgzip "
                         f"(zcat {Path(path).name} | bgzip > calls.vcf.gz) or give it uncompressed") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read it as VCF/BCF ({e}); expected a VCF (plain or bgzipped) "
                         f"or BCF file") from None


def read_vcf(path: PathLike) -> list[Allele]:
    """One :class:`Allele` per ALT of every record, in file order."""
    out: list[Allele] = []
    n_read = 0
    with quiet_htslib(), open_vcf(path) as vf:
        try:
            for row, rec in enumerate(vf):
                for alt in rec.alts or (".",):
                    out.append(Allele(row, rec.chrom, rec.pos, rec.id or ".", rec.ref.upper(), alt.upper()))
                n_read = row + 1
        except (OSError, ValueError, NotImplementedError) as e:  # NotImplementedError: gzip, not bgzip
            raise InputError(f"{path}: {bad_record(path, n_read) or f'bad VCF record #{n_read + 1} ({e})'}") from None
    return out


VCF_FIELDS = ("CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")


def bad_record(path: PathLike, index: int) -> Optional[str]:
    """What is wrong with the ``index``-th (0-based) record of a text VCF, naming its line and field
    (``line 7, field POS: 'x12' is not a position ...``); None when the text looks fine or is BCF."""
    from ...genome.fasta import open_text

    try:
        with open_text(Path(path), errors="replace") as f:
            return _first_problem(f, index)
    except (OSError, EOFError):
        return None


def _first_problem(lines, index: int) -> Optional[str]:
    seen = -1
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip() or line.startswith("#"):
            continue
        seen += 1
        if seen < index:
            continue
        cols = line.split("\t")
        if len(cols) < len(VCF_FIELDS):
            return (f"line {n}: {len(cols)} tab-separated fields, a VCF record needs {len(VCF_FIELDS)} "
                    f"({' '.join(VCF_FIELDS)}); is the line cut short or space-separated?")
        if not cols[1].isdigit() or int(cols[1]) < 1:
            return f"line {n}, field POS: {cols[1][:30]!r} is not a position (a whole number >= 1, 1-based)"
        for name in ("CHROM", "REF", "ALT"):
            if not cols[VCF_FIELDS.index(name)].strip():
                return f"line {n}, field {name}: empty"
        return None
    return None


def check_contigs(alleles: Sequence[Allele], contigs: Sequence[str], vcf: PathLike, reference: PathLike) -> None:
    """One error naming every VCF contig absent from the reference, with its near misses."""
    known = set(contigs)
    missing = sorted({a.chrom for a in alleles} - known)
    if not missing:
        return
    bare = {c.lower().removeprefix("chr"): c for c in contigs}

    def near(c: str) -> str:
        hits = [bare[k] for k in (c.lower().removeprefix("chr"),) if k in bare]
        hits += [h for h in difflib.get_close_matches(c, contigs, n=2, cutoff=0.6) if h not in hits]
        return f"{c} (reference has {' or '.join(hits)})" if hits else c

    shown = ", ".join(list(contigs)[:10]) + (", ..." if len(contigs) > 10 else "")
    raise InputError(f"{vcf}: contigs not in the reference {reference}: {', '.join(near(c) for c in missing[:10])}"
                     f"{', ...' if len(missing) > 10 else ''}; the reference has {shown}. Names must match exactly: "
                     f"rename the VCF's contigs (bcftools annotate --rename-chrs) or use the matching reference")
