"""Coding SNVs (reformer_seq.tasks.scoring.coding_snvs) checked independently with Biopython:
mutate the genome string, re-extract the CDS with Bio's ``location.extract``, translate it (table 11)."""
from __future__ import annotations

from collections import Counter

import pytest
from Bio import SeqIO
from Bio.Seq import Seq

from helpers import DATA
from reformer_seq.genome.annotation import read_cds
from reformer_seq.tasks.scoring.coding_snvs import coding_snvs, genetic_code

SLICE = DATA / "Ecoli_K12_MG1655_NC_000913.2_1-20kb.gbk"


@pytest.fixture(scope="module")
def record():
    return SeqIO.read(SLICE, "genbank")


@pytest.fixture(scope="module")
def snvs(record):
    return coding_snvs(str(record.seq), read_cds(SLICE)[record.id])


def bio_locations(record) -> dict[str, object]:
    return {f.qualifiers["locus_tag"][0]: f.location for f in record.features
            if f.type == "CDS" and "pseudo" not in f.qualifiers and len(f.location.parts) == 1}


def expected_effect(record, location, pos: int, alt: str) -> str:
    """The effect of ``alt`` at ``pos`` from Bio alone: translate the CDS before and after."""
    seq = str(record.seq).upper()
    mutated = Seq(seq[:pos] + alt + seq[pos + 1:])
    before = str(location.extract(Seq(seq)).translate(table=11))
    after = str(location.extract(mutated).translate(table=11))
    diff = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    if not diff:
        return "synonymous"
    assert len(diff) == 1
    return "nonsense" if after[diff[0]] == "*" else "missense"


def test_ref_is_the_genome_base_and_alt_differs(record, snvs):
    seq = str(record.seq).upper()
    assert len(snvs) > 10_000
    assert all(s.ref == seq[s.pos] and s.alt != s.ref and s.alt in "ACGT" for s in snvs)
    assert {s.strand for s in snvs} == {1, -1}


@pytest.mark.slow
def test_effects_match_bio_translation_on_both_strands(record, snvs):
    loc = bio_locations(record)
    checked = Counter()
    per_gene = Counter()
    for s in snvs:  # every SNV of a few genes on each strand, and a spread of the rest
        per_gene[s.gene] += 1
        if per_gene[s.gene] > 150 and per_gene[s.gene] % 7:
            continue
        assert expected_effect(record, loc[s.gene], s.pos, s.alt) == s.effect, s
        checked[(s.strand, s.effect)] += 1
    for strand in (1, -1):
        for effect in ("synonymous", "missense", "nonsense"):
            assert checked[(strand, effect)] >= 10, checked


def test_only_inner_codons_of_genes_inside_the_interval(record):
    genes = read_cds(SLICE)[record.id]
    lo, hi = 5_000, 12_000
    got = coding_snvs(str(record.seq), genes, lo, hi)
    inside = [g for g in genes if lo <= g.start and g.end <= hi]
    assert {s.gene for s in got} == {g.gene for g in inside}
    for g in inside:
        pos = {s.pos for s in got if s.gene == g.gene}
        assert min(pos) == g.start + 3 and max(pos) == g.end - 4  # start and stop codons left out


def test_every_sense_codon_has_nine_snvs_with_the_right_classes():
    code = genetic_code(11)
    assert code["TGA"] == code["TAA"] == code["TAG"] == "*" and code["ATG"] == "M"
    from reformer_seq.tasks.scoring.coding_snvs import codon_snvs

    effects = Counter(e for c, aa in code.items() if aa != "*" for _, _, e in codon_snvs(c, code))
    assert sum(effects.values()) == 61 * 9
    assert effects["nonsense"] == 23  # the textbook count of single-base paths to a stop (table 11)
