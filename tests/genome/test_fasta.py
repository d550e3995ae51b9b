"""The FASTA/GenBank reader against Bio.SeqIO (also through load_genome), and every bad-input case.
(The encoded-genome cache: test_encoded.py.)"""
from __future__ import annotations

import bz2
import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
from Bio import SeqIO, bgzf

from reformer_seq.errors import InputError
from reformer_seq.genome.encoded import EncodedRecord, load_genome
from reformer_seq.genome.fasta import read_records
from reformer_seq.genome.tokenizers import NucleotideTokenizer

from helpers import DATA, ECOLI, SHARED

NUC = NucleotideTokenizer()
SHIPPED = sorted(p.name for p in DATA.iterdir() if p.is_file() and p.name != "README.md")  # genomes only


def seqio_records(path: Path) -> list[tuple[str, str, str]]:
    """The oracle: Bio.SeqIO directly, format from the extension."""
    gb = any(path.name.endswith(e) for e in (".gbk", ".gbk.gz", ".gb", ".gbff"))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as h:
        return [(r.id, r.description, str(r.seq)) for r in SeqIO.parse(h, "genbank" if gb else "fasta")]


# ---------------------------------------------------------------------- reading
@pytest.mark.parametrize("name", SHIPPED)
def test_reader_matches_seqio_on_shipped_genomes(name: str) -> None:
    got = [tuple(r) for r in read_records(DATA / name)]
    assert got == seqio_records(DATA / name) and len(got) >= 1


SHARED_FILES = ["Ecoli_K12_MG1655_NC_000913.2.gbk.gz", "Scerevisiae_chrI.fa", "Athaliana_chloroplast_NC_000932.1.fa"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARED_FILES)
def test_reader_matches_seqio_on_shared_genomes(name: str) -> None:
    if not (SHARED / name).exists():
        pytest.skip(f"{SHARED / name} not present (the shipped copies in data/ are tested above)")
    assert [tuple(r) for r in read_records(SHARED / name)] == seqio_records(SHARED / name)


def test_genbank_and_fasta_of_ecoli_agree() -> None:
    gb = next(read_records(DATA / "Ecoli_K12_MG1655_NC_000913.2_1-20kb.gbk"))
    fa = next(read_records(ECOLI))
    assert gb.id == "NC_000913.2" and gb.sequence == fa.sequence[:20000]


def test_bgzip_gzip_and_multi_record(tmp_path: Path) -> None:
    names = ["phiX174_NC_001422.1.fa", "Human_mito_NC_001807.fa", "phage_lambda_NC_001416.1.fa.gz"]
    expected = [r for n in names for r in seqio_records(DATA / n)]
    text = "".join(f">{d}\n" + "\n".join(s[i:i + 60] for i in range(0, len(s), 60)) + "\n" for _, d, s in expected)
    (tmp_path / "multi.fa").write_text(text)
    with bgzf.BgzfWriter(str(tmp_path / "multi.fa.bgz")) as w:  # bgzip: many gzip members
        w.write(text.encode())
    with gzip.open(tmp_path / "multi.fna.gz", "wt") as f:
        f.write(text)
    gbk = DATA / "Ecoli_K12_MG1655_NC_000913.2_1-20kb.gbk"
    with gzip.open(tmp_path / "e.gbk.gz", "wb") as f:
        f.write(gbk.read_bytes())
    for name in ("multi.fa", "multi.fa.bgz", "multi.fna.gz"):
        assert [tuple(r) for r in read_records(tmp_path / name)] == expected
    assert [tuple(r) for r in read_records(tmp_path / "e.gbk.gz")] == seqio_records(gbk)
    recs = load_genome(tmp_path / "multi.fa.bgz")
    assert [r.id for r in recs] == [e[0] for e in expected]
    for r, (_, d, s) in zip(recs, expected):
        assert r.description == d and np.array_equal(r.ids, NUC.encode(s))


# ---------------------------------------------------------------------- load_genome
def test_load_genome_matches_encoding_of_seqio(ecoli_records: list[EncodedRecord]) -> None:
    (rid, desc, seq), = seqio_records(ECOLI)
    rec, = ecoli_records
    assert (rec.id, rec.description, len(rec)) == (rid, desc, 4_639_675)
    assert isinstance(rec.ids, np.memmap) and rec.ids.dtype == np.uint8 and not rec.ids.flags.writeable
    assert np.array_equal(rec.ids, NUC.encode(seq))


# ---------------------------------------------------------------------- bad input
def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase the one-line error must contain)."""
    ecoli_gz = ECOLI.read_bytes()
    fastq = b"@read1\nACGT\n+\nIIII\n"
    no_origin = (b"LOCUS       X1                        10 bp    DNA     linear   UNK 01-JAN-1980\n"
                 b"DEFINITION  x.\nACCESSION   X1\nVERSION     X1.1\nFEATURES             Location/Qualifiers\n//\n")
    return {
        "missing": (tmp_path / "nope.fa", "file not found"),
        "directory": (tmp_path, "is a directory"),
        "empty": (_write(tmp_path, "empty.fa", b""), "empty file"),
        "blank": (_write(tmp_path, "blank.fa", b"\n \n\t\n"), "empty file"),
        "empty gzip": (_write(tmp_path, "empty.fa.gz", gzip.compress(b"")), "empty file"),
        "fastq": (_write(tmp_path, "reads.fa", fastq), "FASTQ"),
        "fastq gz": (_write(tmp_path, "reads.fastq.gz", gzip.compress(fastq)), "FASTQ"),
        "binary": (_write(tmp_path, "x.fa", bytes(range(256)) * 4), "binary"),
        "binary no NUL": (_write(tmp_path, "y.fa", b">r\nACGT\n" + bytes(range(128, 256)) * 4), "binary"),
        "binary late": (_write(tmp_path, "z.fa", b">r\n" + b"ACGT\n" * 20000 + b"\xff\xfe\n"), "binary"),
        "text": (_write(tmp_path, "notes.fa", b"hello world\n"), "starts neither"),
        "no sequence": (_write(tmp_path, "nos.fa", b">first\nACGT\n>second desc\n>third\nAC\n"), "'second' (#2) has no sequence"),
        "no sequence last": (_write(tmp_path, "nos2.fa", b">first\nACGT\n>last\n"), "'last' (#2) has no sequence"),
        "invalid strict": (_write(tmp_path, "inv.fa", b">a\nACGT\n>chrB x\nACGTACGTAC\nGTXA\n"),
                           "record 'chrB' (#2): invalid character 'X' at position 13 "),
        "truncated gzip": (_write(tmp_path, "half.fa.gz", ecoli_gz[: len(ecoli_gz) // 2]), "truncated"),
        "short truncated gzip": (_write(tmp_path, "tiny.fa.gz", gzip.compress(b">a\nACGT\n" * 1000)[:40]), "truncated"),
        "corrupt gzip": (_write(tmp_path, "bad.fa.gz", ecoli_gz[:5000] + bytes(5000) + ecoli_gz[10000:20000]), "corrupt"),
        "bzip2": (_write(tmp_path, "x.fa.bz2", bz2.compress(b">a\nACGT\n")), "bzip2"),
        "genbank cut": (_write(tmp_path, "cut.gbk", no_origin), "GENBANK"),
    }


BAD_CASES = list(_bad_inputs(Path(tempfile.gettempdir())).keys())


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gives_one_line(case: str, tmp_path: Path) -> None:
    path, phrase = _bad_inputs(tmp_path)[case]
    with pytest.raises(InputError) as err:
        load_genome(path, cache_dir=tmp_path / "cache", strict=True)
    msg = str(err.value)
    assert phrase in msg, msg
    assert "\n" not in msg and msg.startswith(str(path)), msg
    assert "expected" in msg or "use strict=False" in msg, msg
    if path.is_file():  # the reader alone fails the same way (except strict decoding)
        with pytest.raises(InputError):
            for _ in read_records(path):
                if case == "invalid strict":
                    raise InputError("reader is lenient")


def test_genbank_without_sequence(tmp_path: Path) -> None:
    text = (DATA / "Ecoli_K12_MG1655_NC_000913.2_1-20kb.gbk").read_text()
    head = text[: text.index("FEATURES")]
    path = _write(tmp_path, "contig.gbk", (head + "CONTIG      join(U00096.2:1..20000)\n//\n").encode())
    with pytest.raises(InputError, match="no sequence") as err:
        load_genome(path, cache_dir=tmp_path)
    assert "\n" not in str(err.value)
