"""The encoded-genome cache (genome/encoded.py): a cached load skips parsing, the key follows the
file, the tokenizer and the options, damaged or stale entries are rebuilt, a failed strict load
leaves nothing, records pickle as a path, and an unwritable cache falls back with a warning."""
from __future__ import annotations

import errno
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from Bio import SeqIO

from helpers import DATA
from reformer_seq.errors import InputError, InputWarning
from reformer_seq.genome import encoded
from reformer_seq.genome.encoded import EncodedRecord, default_cache_dir, load_genome
from reformer_seq.genome.fasta import read_records
from reformer_seq.genome.tokenizers import ByteTokenizer, NucleotideTokenizer

NUC = NucleotideTokenizer()


def test_cached_load_skips_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lambda.fa.gz"
    shutil.copy(DATA / "phage_lambda_NC_001416.1.fa.gz", path)
    first = load_genome(path, cache_dir=tmp_path / "c")
    monkeypatch.setattr(encoded, "read_records", _no_parsing)
    second = load_genome(path, cache_dir=tmp_path / "c")
    assert [r.id for r in second] == [r.id for r in first]
    assert np.array_equal(second[0].ids, first[0].ids)
    assert not list((tmp_path / "c" / "genomes").glob(".tmp-*"))  # no temporary folder left behind


def _no_parsing(*args, **kwargs):
    raise AssertionError("the cached genome was parsed again")


def test_cache_rebuilt_when_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "phix.fa"
    shutil.copy(DATA / "phiX174_NC_001422.1.fa", path)
    cache = tmp_path / "c"
    before = np.array(load_genome(path, cache_dir=cache)[0].ids)
    lines = path.read_text().splitlines()
    lines[1] = ("C" if lines[1][0] != "C" else "G") + lines[1][1:]
    path.write_text("\n".join(lines) + "\n")
    after = load_genome(path, cache_dir=cache)[0].ids
    assert after[0] != before[0] and np.array_equal(after[1:], before[1:])
    assert after[0] == NUC.encode(lines[1][0])[0]
    assert len(list((cache / "genomes").glob("*/index.json"))) == 1  # the stale entry is gone


def test_cache_key_includes_tokenizer_and_options(tmp_path: Path) -> None:
    path = DATA / "Human_hg19_chr17_part_40kb.fa"
    seq = next(read_records(path)).sequence
    nuc = load_genome(path, cache_dir=tmp_path)[0]
    byte = load_genome(path, ByteTokenizer(), cache_dir=tmp_path)[0]
    soft = load_genome(path, cache_dir=tmp_path, keep_softmask=True)[0]
    assert byte.ids.dtype == np.uint16 and ByteTokenizer().decode(byte.ids) == seq
    assert nuc.softmask is None and np.array_equal(nuc.ids, NUC.encode(seq))
    assert soft.softmask.tolist() == [c.islower() for c in seq]
    assert len(list((tmp_path / "genomes").glob("*/index.json"))) == 3


def test_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    load_genome(DATA / "phiX174_NC_001422.1.fa", cache_dir=tmp_path)
    tokens, = (tmp_path / "genomes").glob("*/tokens.npy")
    tokens.write_bytes(tokens.read_bytes()[:1000])
    rec, = load_genome(DATA / "phiX174_NC_001422.1.fa", cache_dir=tmp_path)
    assert len(rec) == 5386


def test_strict_failure_leaves_no_cache(tmp_path: Path) -> None:
    path = tmp_path / "bad.fa"
    path.write_text(">ok\nACGT\n>bad one\nACGTJ\n")
    with pytest.raises(InputError):
        load_genome(path, cache_dir=tmp_path / "c", strict=True)
    assert not list((tmp_path / "c" / "genomes").iterdir())
    with pytest.warns(InputWarning, match="'bad' 1 "):
        lenient, = load_genome(path, cache_dir=tmp_path / "c")[1:]
    assert NUC.decode(lenient.ids) == "ACGTN"


def test_pickled_record_reopens_the_cache(ecoli_records: list[EncodedRecord]) -> None:
    blob = pickle.dumps(ecoli_records[0])
    assert len(blob) < 2000  # the path, not 4.6 MB of ids
    again = pickle.loads(blob)
    assert isinstance(again.ids, np.memmap) and np.array_equal(again.ids, ecoli_records[0].ids)
    plain = EncodedRecord("x", "x", np.arange(4, 8, dtype=np.uint8))
    assert np.array_equal(pickle.loads(pickle.dumps(plain)).ids, plain.ids)


def test_without_cache_and_unwritable_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = DATA / "Human_mito_NC_001807.fa"
    expected = NUC.encode(SeqIO.read(path, "fasta").seq)
    assert np.array_equal(load_genome(path, use_cache=False)[0].ids, expected)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.warns(UserWarning, match="SEQFORMER_CACHE_DIR"):
        rec, = load_genome(path, cache_dir=tmp_path / "ro")
    assert np.array_equal(rec.ids, expected)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEQFORMER_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    load_genome(DATA / "phiX174_NC_001422.1.fa")
    assert list((tmp_path / "x" / "genomes").glob("phiX174*/tokens.npy"))
    monkeypatch.delenv("SEQFORMER_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "seqformer"
