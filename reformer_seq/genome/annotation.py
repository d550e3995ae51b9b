"""Protein-coding genes from a GenBank annotation: :class:`CDS` records and their sequences.

:func:`read_cds` reads the ``CDS`` features of every record of a GenBank file (plain or gzip)
with Biopython, keeping the simple ones: not ``/pseudo`` (nor ``/pseudogene``), one contiguous
span (no ``join``/``order``), a length that is a multiple of 3. Coordinates are 0-based half-open
on the forward strand; ``strand`` is +1 or -1. :func:`cds_sequence` gives a gene's bases in gene
order (reverse complement on the minus strand) and :func:`cds_coordinates` the genome position
of each of them, so ``seq[cds_coordinates(c)[i]]`` is the complement of ``cds_sequence(seq, c)[i]``
on the minus strand and equal to it on the plus strand.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .fasta import open_text
from ..types import PathLike

_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


@dataclass(frozen=True)
class CDS:
    """One coding sequence: ``seq[start:end]`` of ``record`` (0-based, half-open), on ``strand`` (+1/-1)."""

    record: str
    start: int
    end: int
    strand: int
    gene: str = "?"  # locus_tag, else gene name

    def __len__(self) -> int:
        return self.end - self.start


def reverse_complement(seq: str) -> str:
    return seq.translate(_COMPLEMENT)[::-1]


def _simple_cds(feature, record_id: str):
    """The :class:`CDS` of a Bio ``SeqFeature``, or None for pseudo genes, joined spans and partial codons."""
    loc = feature.location
    q = feature.qualifiers
    if feature.type != "CDS" or "pseudo" in q or "pseudogene" in q or loc is None:
        return None
    if len(getattr(loc, "parts", [loc])) != 1 or loc.strand not in (1, -1) or len(loc) % 3:
        return None
    gene = (q.get("locus_tag") or q.get("gene") or ["?"])[0]
    return CDS(record_id, int(loc.start), int(loc.end), int(loc.strand), gene)


def read_cds(path: PathLike) -> dict[str, list[CDS]]:
    """``{record id: [CDS, ...]}`` sorted by start, for every record of a GenBank file (plain or gzip)."""
    from Bio import SeqIO

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: GenBank file not found; expected an annotated .gb/.gbk/.gbff (plain or gzip)")
    out: dict[str, list[CDS]] = {}
    try:
        with open_text(path) as f:
            for rec in SeqIO.parse(f, "genbank"):
                cds = [c for c in (_simple_cds(f_, rec.id) for f_ in rec.features) if c is not None]
                out[rec.id] = sorted(cds, key=lambda c: (c.start, c.end, c.strand))
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read it as GenBank ({e}); expected an annotated .gbk "
                         f"(plain or gzip) with CDS features") from None
    if not out:
        raise InputError(f"{path}: no GenBank records found; expected a file starting with a LOCUS line")
    return out


def cds_sequence(seq: str, cds: CDS) -> str:
    """The CDS's bases in gene order: ``seq[start:end]``, reverse-complemented on the minus strand."""
    s = seq[cds.start:cds.end]
    return s if cds.strand == 1 else reverse_complement(s)


def cds_coordinates(cds: CDS) -> list[int]:
    """The 0-based genome position of each CDS base, in gene order (descending on the minus strand)."""
    return list(range(cds.start, cds.end)) if cds.strand == 1 else list(range(cds.end - 1, cds.start - 1, -1))
