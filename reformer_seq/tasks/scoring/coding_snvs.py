"""Every coding SNV of an annotated genome, classed by its effect on the protein.

:func:`coding_snvs` enumerates the 9 single-base substitutions of each inner codon (not the
first codon, the start, nor the last, the stop; not internal stop codons, e.g. selenocysteine
TGA) of the :class:`~reformer_seq.genome.annotation.CDS` lying wholly in ``[lo, hi)``, and classes
each with a genetic code (default NCBI table 11, the bacterial code, from ``Bio.Data.CodonTable``)
as ``synonymous`` (same amino acid), ``missense`` (another amino acid) or ``nonsense`` (a new
stop). Positions and alleles are on the forward strand, as a VCF writes them: for a minus-strand
gene the base is the complement of the codon's base at the mirrored CDS position
(:func:`~reformer_seq.genome.annotation.cds_coordinates` gives that position).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Iterable, Iterator

from ...errors import InputError
from ...genome.annotation import CDS, cds_coordinates, cds_sequence, reverse_complement

EFFECTS = ("synonymous", "missense", "nonsense")


@dataclass(frozen=True)
class CodingSNV:
    """One SNV: 0-based forward-strand ``pos``, forward-strand ``ref``/``alt``, its ``effect`` in ``gene``."""

    record: str
    pos: int
    ref: str
    alt: str
    effect: str
    gene: str
    strand: int  # the gene's strand


@cache
def genetic_code(table: int = 11) -> dict[str, str]:
    """Codon -> one-letter amino acid, ``*`` for stops, for NCBI translation table ``table``."""
    from Bio.Data.CodonTable import unambiguous_dna_by_id

    if table not in unambiguous_dna_by_id:
        raise InputError(f"genetic code {table} unknown; use an NCBI translation table id (11 for bacteria)")
    t = unambiguous_dna_by_id[table]
    code = dict(t.forward_table)
    code.update({c: "*" for c in t.stop_codons})
    return code


def codon_snvs(codon: str, code: dict[str, str]) -> Iterator[tuple[int, str, str]]:
    """(offset in the codon, new base, effect) of the 9 substitutions of a sense codon."""
    aa = code[codon]
    for k in range(3):
        for b in "ACGT":
            if b != codon[k]:
                new = code[codon[:k] + b + codon[k + 1:]]
                yield k, b, "synonymous" if new == aa else ("nonsense" if new == "*" else "missense")


def cds_snvs(seq: str, cds: CDS, code: dict[str, str]) -> Iterator[CodingSNV]:
    """The SNVs of one CDS's inner sense codons, on the forward strand of ``seq`` (upper case)."""
    gene_seq = cds_sequence(seq, cds)
    coords = cds_coordinates(cds)
    for c in range(3, len(gene_seq) - 3, 3):
        codon = gene_seq[c:c + 3]
        if code.get(codon, "*") == "*":  # internal stop (selenocysteine) or a non-ACGT letter
            continue
        for k, b, effect in codon_snvs(codon, code):
            pos = coords[c + k]
            alt = b if cds.strand == 1 else reverse_complement(b)
            yield CodingSNV(cds.record, pos, seq[pos], alt, effect, cds.gene, cds.strand)


def coding_snvs(seq: str, genes: Iterable[CDS], lo: int = 0, hi: int | None = None,
                table: int = 11) -> list[CodingSNV]:
    """Every SNV of the inner codons of the CDS wholly inside ``[lo, hi)`` of ``seq``, sorted by position.

    ``seq`` is the record's sequence (any case); ``genes`` its CDS (e.g. ``read_cds(path)[record]``).
    """
    seq = seq.upper()
    hi = len(seq) if hi is None else hi
    code = genetic_code(table)
    out: list[CodingSNV] = []
    for cds in genes:
        if cds.end > len(seq):
            raise InputError(f"CDS {cds.gene} ends at {cds.end:,}, past the {len(seq):,}-base sequence of "
                             f"{cds.record}; use the annotation of this very sequence")
        if lo <= cds.start and cds.end <= hi:
            out.extend(cds_snvs(seq, cds, code))
    return sorted(out, key=lambda s: (s.pos, s.alt, s.gene))
