"""genome/labelled.py: labelled TSVs and class FASTAs read as the tokenizer encodes them, in input
order; the task inferred from the labels; class order; label encoding; the validation split's
sizes and seeding; and errors that name the file, line or record."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reformer_seq.errors import ConfigError, InputError
from reformer_seq.genome.labelled import (MAX_INTEGER_CLASSES, LabelledSet, check_lengths, class_names,
                                          encode_labels, infer_task, read_class_fastas, read_tsv, split_validation)
from reformer_seq.genome.tokenizers import NucleotideTokenizer

TOK = NucleotideTokenizer()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def same_tokens(got: list[np.ndarray], seqs: list[str]) -> bool:
    return len(got) == len(seqs) and all(np.array_equal(t, TOK.encode(s)) for t, s in zip(got, seqs))


def test_tsv_of_sequences_reads_as_the_tokenizer_encodes(tmp_path):
    seqs = ["ACGT", "ggccNNa", "TTTTTTTTTT"]
    # header case and column order do not matter; comment lines and blank lines are skipped
    tsv = write(tmp_path / "a.tsv", "Label\tSEQUENCE\n# a comment\n" + "".join(f"{y}\t{s}\n" for s, y in
                                                                              zip(seqs, ["x", "y", "x"])) + "\n")
    data = read_tsv(tsv, TOK)
    assert same_tokens(data.tokens, seqs)
    assert data.labels == ["x", "y", "x"] and data.ids == ["row1", "row2", "row3"] and data.source == str(tsv)
    # an id column beside the sequences names the rows
    tsv = write(tmp_path / "b.tsv", "id\tsequence\tlabel\nfirst\tACGT\t0\nsecond\tGG\t1\n")
    assert read_tsv(tsv, TOK).ids == ["first", "second"]


def test_tsv_of_ids_takes_the_fasta_records_in_tsv_order(tmp_path):
    records = {"r1": "ACGTACGT", "r2": "GGGG", "r3": "ATATATAT"}
    fa = write(tmp_path / "a.fa", "".join(f">{k} description\n{v}\n" for k, v in records.items()))
    tsv = write(tmp_path / "ids.tsv", "id\tlabel\nr3\t1\nr1\t0\nr3\t1\n")  # TSV order, repeats allowed
    data = read_tsv(tsv, TOK, fasta=fa)
    assert data.ids == ["r3", "r1", "r3"] and data.labels == ["1", "0", "1"]
    assert same_tokens(data.tokens, [records["r3"], records["r1"], records["r3"]])
    tsv = write(tmp_path / "bad.tsv", "id\tlabel\nr1\t0\nnope\t1\nzip\t1\nr2\t0\n")
    with pytest.raises(InputError, match=r"bad.tsv: 2 id\(s\) not in .*a.fa \(e.g. nope, zip\)"):
        read_tsv(tsv, TOK, fasta=fa)
    with pytest.raises(InputError, match="pass the FASTA holding those records with --fasta"):
        read_tsv(tsv, TOK)


@pytest.mark.parametrize("text,expect", [
    ("", "empty; expected a header line"),
    ("sequence\tclass\nACGT\t0\n", "needs a 'label' column"),
    ("sequence\tlabel\nACGT\t0\nACGT\n", "line 3 has 1 fields, the header has 2"),
    ("sequence\tlabel\n\t0\n", "sequence 'row1' is empty"),
    ("sequence\tlabel\nACGT\t\n", "sequence 'row1' has an empty label"),
    ("sequence\tlabel\n", "no labelled sequences"),
])
def test_tsv_errors_name_the_file_and_line(tmp_path, text, expect):
    tsv = write(tmp_path / "t.tsv", text)
    with pytest.raises(InputError, match=expect) as e:
        read_tsv(tsv, TOK)
    assert str(tsv) in str(e.value)
    with pytest.raises(InputError, match="no such labelled TSV"):
        read_tsv(tmp_path / "missing.tsv", TOK)


def test_strict_rejects_non_iupac_and_lenient_reads_n(tmp_path):
    tsv = write(tmp_path / "t.tsv", "sequence\tlabel\nACGT\t0\nAC!T\t1\n")
    with pytest.raises(InputError, match=r"t.tsv: line 3"):
        read_tsv(tsv, TOK, strict=True)
    data = read_tsv(tsv, TOK)
    assert np.array_equal(data.tokens[1], TOK.encode("ACNT"))


def test_class_fastas_label_every_record(tmp_path):
    pos = write(tmp_path / "pos.fa", ">p1\nACGT\n>p2\nGGCC\n")
    neg = write(tmp_path / "neg.fa", ">n1\nTTTT\n")
    data = read_class_fastas([f"motif={pos}", f"plain={neg}"], TOK)
    assert data.ids == ["p1", "p2", "n1"] and data.labels == ["motif", "motif", "plain"]
    assert same_tokens(data.tokens, ["ACGT", "GGCC", "TTTT"])
    for spec in ("motif", "=x.fa", "motif="):
        with pytest.raises(ConfigError, match="expected NAME=FILE"):
            read_class_fastas([spec], TOK)
    empty = write(tmp_path / "empty.fa", "")
    with pytest.raises(InputError, match="no records for class 'e'|empty"):
        read_class_fastas([f"e={empty}"], TOK)


@pytest.mark.parametrize("labels,task", [
    (["a", "b", "a"], "classify"),
    (["0", "1", "1"], "classify"),
    (["1", "2.0", "3"], "classify"),  # integers however written
    (["0.5", "1.25"], "regress"),
    ([str(i) for i in range(MAX_INTEGER_CLASSES)], "classify"),
    ([str(i) for i in range(MAX_INTEGER_CLASSES + 1)], "regress"),
    (["1", "two"], "classify"),
    (["1", "inf"], "classify"),  # not a finite number: a class name
])
def test_infer_task(labels, task):
    assert infer_task(labels) == task
    other = "regress" if task == "classify" else "classify"
    assert infer_task(labels, other) == other  # an explicit task wins


def test_infer_task_rejects_an_unknown_task():
    with pytest.raises(ConfigError, match="--task must be one of classify, regress"):
        infer_task(["0", "1"], "cluster")


def test_class_names_and_encode_labels():
    assert class_names(["10", "2", "1", "2"]) == ["1", "2", "10"]  # numbers: numerically
    assert class_names(["b", "10", "a"]) == ["10", "a", "b"]  # otherwise: as text
    data = LabelledSet(["r1", "r2", "r3"], [np.zeros(1)] * 3, ["b", "a", "b"], "src.tsv")
    y = encode_labels(data, "classify")
    assert y.dtype == np.int64 and y.tolist() == [1, 0, 1]
    assert encode_labels(data, "classify", ["b", "a"]).tolist() == [0, 1, 0]  # the given class order
    with pytest.raises(InputError, match=r"src.tsv: label\(s\) \['b'\] not among the training classes"):
        encode_labels(data, "classify", ["a", "c"])
    one = LabelledSet(["r1"], [np.zeros(1)], ["a"], "one.tsv")
    with pytest.raises(InputError, match="one.tsv: only one class \\('a'\\)"):
        encode_labels(one, "classify")
    num = LabelledSet(["r1", "r2"], [np.zeros(1)] * 2, ["0.5", "-2e3"], "n.tsv")
    assert encode_labels(num, "regress").tolist() == [0.5, -2000.0]
    with pytest.raises(InputError, match="label 'b' of 'r1' is not a number"):
        encode_labels(data, "regress")


@pytest.mark.parametrize("stratify", [False, True])
def test_split_validation_sizes_and_seeding(stratify):
    labels = np.array([0] * 30 + [1] * 9 + [2] * 2)
    tr, va = split_validation(labels, 0.2, seed=3, stratify=stratify)
    assert len(np.intersect1d(tr, va)) == 0 and sorted(np.concatenate([tr, va]).tolist()) == list(range(41))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)  # in input order
    if stratify:  # per class: round(0.2 * n), at least one, leaving at least one for training
        assert [int((labels[va] == c).sum()) for c in (0, 1, 2)] == [6, 2, 1]
    else:
        assert len(va) == round(0.2 * 41)
    again = split_validation(labels, 0.2, seed=3, stratify=stratify)
    assert np.array_equal(again[1], va)
    assert not np.array_equal(split_validation(labels, 0.2, seed=4, stratify=stratify)[1], va)


def test_split_validation_errors():
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match=r"--val-fraction must be in \(0, 1\)"):
            split_validation(np.zeros(10), fraction, 0, False)
    with pytest.raises(InputError, match=r"too few sequences \(1\).*--val FILE"):
        split_validation(np.zeros(1), 0.5, 0, False)


def test_check_lengths_names_the_long_records():
    data = LabelledSet([f"r{i}" for i in range(6)], [np.zeros(n) for n in (10, 50, 60, 70, 80, 20)], ["0"] * 6,
                       "x.tsv")
    check_lengths(data, 80)
    with pytest.raises(InputError) as e:
        check_lengths(data, 40)
    msg = str(e.value)
    assert msg.startswith("x.tsv: 4 sequence(s) longer than the model's max_seq_len 40: r1 (50 bases), "
                          "r2 (60 bases), r3 (70 bases);")  # the first three shown
    assert "r4" not in msg and "seqkit sliding -W 40 -s 40" in msg
