"""The CDS reader (reformer_seq.genome.annotation) against Biopython's own ``location.extract``."""
from __future__ import annotations

import gzip
import shutil

import pytest
from Bio import SeqIO

from helpers import DATA
from reformer_seq.errors import InputError
from reformer_seq.genome.annotation import CDS, cds_coordinates, cds_sequence, read_cds, reverse_complement

SLICE = DATA / "Ecoli_K12_MG1655_NC_000913.2_1-20kb.gbk"


@pytest.fixture(scope="module")
def record():
    return SeqIO.read(SLICE, "genbank")


def test_read_cds_matches_bio_extract(record):
    cds = read_cds(SLICE)
    assert list(cds) == [record.id]
    genes = cds[record.id]
    seq = str(record.seq).upper()
    bio = {}
    for f in record.features:
        if f.type == "CDS" and "pseudo" not in f.qualifiers and len(f.location.parts) == 1 and len(f.location) % 3 == 0:
            bio[(int(f.location.start), int(f.location.end), f.location.strand)] = f
    assert len(genes) == len(bio) > 15
    assert {-1, 1} == {c.strand for c in genes}
    assert [c.start for c in genes] == sorted(c.start for c in genes)
    for c in genes:
        f = bio[(c.start, c.end, c.strand)]
        assert c.gene == f.qualifiers["locus_tag"][0]
        assert cds_sequence(seq, c) == str(f.location.extract(record.seq)).upper()
        assert cds_coordinates(c) == [int(p) for p in f.location]  # Bio yields gene order
        coords = cds_coordinates(c)
        bases = "".join(seq[p] for p in coords)
        assert cds_sequence(seq, c) == (bases if c.strand == 1 else bases.translate(str.maketrans("ACGT", "TGCA")))


def test_read_cds_gzip_and_errors(tmp_path):
    gz = tmp_path / "slice.gbk.gz"
    with open(SLICE, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert read_cds(gz) == read_cds(SLICE)
    with pytest.raises(InputError, match="not found"):
        read_cds(tmp_path / "missing.gbk")


def test_cds_helpers_on_a_toy_sequence():
    seq = "AAATGCCCTAGTT"
    plus, minus = CDS("x", 2, 11, 1), CDS("x", 2, 11, -1)
    assert cds_sequence(seq, plus) == "ATGCCCTAG"
    assert cds_sequence(seq, minus) == reverse_complement("ATGCCCTAG") == "CTAGGGCAT"
    assert cds_coordinates(minus) == list(range(10, 1, -1))
    assert len(plus) == 9
