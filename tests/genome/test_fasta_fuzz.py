"""Property-based fuzzing of the FASTA/GenBank reader: any file, plain or gzipped, gives records or
the project's input error (InputError, one line), never another exception; blank lines before the
first record are skipped."""
from __future__ import annotations

import gzip
import tempfile
import warnings
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from reformer_seq.errors import InputError  # noqa: E402
from reformer_seq.genome.encoded import load_genome
from reformer_seq.genome.fasta import read_records  # noqa: E402

LOCUS = "LOCUS       X1                        12 bp    DNA     linear   UNK 01-JAN-1980"
# Pieces that real and broken files are made of; hypothesis mixes them with arbitrary text.
LINES = st.one_of(
    st.sampled_from(["", " ", "\t", ">", ">r1", ">chr2 some description", "ACGT", "acgtnNNN", "ACGT$%QXZ!",
                     "RYSWKMBDHV-.", "@read", "+", "IIII", LOCUS, "DEFINITION  x.", "ORIGIN",
                     "        1 acgtacgtac gt", "//", ";comment", "#x", "CONTIG      join(U00096.2:1..20)"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30).map(lambda s: s.replace("\n", "")),
    st.text(alphabet="ACGTN>\n \t", max_size=40),
)
BODY = st.lists(LINES, max_size=25).map("\n".join)


@st.composite
def files(draw) -> tuple[str, bytes]:
    """(file name, file bytes): text from LINES (LF or CRLF), or raw bytes; plain, gzip or cut gzip."""
    if draw(st.integers(0, 9)) == 0:
        data = draw(st.binary(max_size=200))
    else:
        text = draw(BODY)
        if draw(st.booleans()):
            text += "\n"
        if draw(st.integers(0, 4)) == 0:
            text = text.replace("\n", "\r\n")
        data = text.encode("utf-8")
    name = draw(st.sampled_from(["x.fa", "x.gbk", "x.txt"]))
    packing = draw(st.sampled_from(["plain", "plain", "gzip", "cut gzip"]))
    if packing != "plain":
        data = gzip.compress(data)
        name += ".gz"
        if packing == "cut gzip":
            data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    return name, data


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files(), st.booleans())
@example(
    file=('x.fa',
     b'LOCUS       X1                        12 bp    DNA     linear   UNK 01-JAN-1980\r\nCONTIG      join(U00096.2:1..20)\r\n\r\nCONTIG      join(U00096.2:1..20)'),
    strict=False,
)  # found by this test on 2026-12-02: two CONTIG lines tripped an assert inside Biopython's GenBank scanner
def test_any_file_gives_records_or_an_input_error(file: tuple[str, bytes], strict: bool) -> None:
    name, data = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lenient reading may warn about replaced characters
            try:
                records = list(read_records(path))
            except InputError as e:
                assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
                records = None
            try:
                encoded = load_genome(path, use_cache=False, strict=strict)
            except InputError as e:
                assert "\n" not in str(e), str(e)
                encoded = None
    if records is not None:
        assert records and all(r.sequence for r in records)
        if not strict:  # lenient encoding never refuses what the reader returned
            assert encoded is not None and [len(r) for r in encoded] == [len(r.sequence) for r in records]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("lead", ["\n", "\n\n", " \n\t\n", "\r\n"])
def test_blank_lines_before_the_first_record_are_skipped(tmp_path: Path, lead: str, gz: bool) -> None:
    body = ">a first\nACGT\nAC\n>b\nGG\n"
    data = (lead + body).encode()
    path = tmp_path / ("x.fa.gz" if gz else "x.fa")
    path.write_bytes(gzip.compress(data) if gz else data)
    assert [tuple(r) for r in read_records(path)] == [("a", "a first", "ACGTAC"), ("b", "b", "GG")]
    gb = (tmp_path / "x.gbk")
    gb.write_text(lead + LOCUS + "\nDEFINITION  x.\nORIGIN\n        1 acgtacgtac gt\n//\n")
    assert [r.sequence for r in read_records(gb)] == ["ACGTACGTACGT"]
