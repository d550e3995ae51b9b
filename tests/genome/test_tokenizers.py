"""Tokenizers: fixed ids, encoding against a per-character oracle, round trips, reverse complement, specs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from Bio import SeqIO
from Bio.Seq import Seq

from reformer_seq.errors import CheckpointError, InputError
from reformer_seq.genome.fasta import read_records
from reformer_seq.genome.tokenizers import (ByteTokenizer, InvalidCharacterError, NucleotideTokenizer, make_tokenizer,
                                     tokenizer_from_spec)

from helpers import DATA

NUC = NucleotideTokenizer()
BYTE = ByteTokenizer()


def oracle_encode(s: str, strict: bool = False) -> list[int]:
    """Per-character reference for NucleotideTokenizer.encode (slow, obviously right)."""
    out = []
    for i, ch in enumerate(s):
        u = ch.upper()
        if u in "ACGT":
            out.append(4 + "ACGT".index(u))
        elif u == "U":
            out.append(7)
        elif u in "RYSWKMBDHVN-.":
            out.append(8)
        elif strict:
            raise InvalidCharacterError(ch, i, "")
        else:
            out.append(8)
    return out


def test_fixed_ids() -> None:
    for tok in (NUC, BYTE):
        assert (tok.pad_id, tok.mask_id, tok.unk_id, tok.sep_id) == (0, 1, 2, 3)
    assert NUC.vocab_size == 9 and BYTE.vocab_size == 260
    assert list(NUC.encode("ACGTN")) == [4, 5, 6, 7, 8] and NUC.n_id == 8
    assert NUC.base_ids == (4, 5, 6, 7)
    assert list(BYTE.encode(b"\x00A\xff")) == [4, 4 + 65, 4 + 255]


def test_issue_example() -> None:
    ids = NUC.encode("ACGTNacgtRY")
    assert ids.dtype == np.uint8
    assert NUC.decode(ids) == "ACGTNACGTNN"
    assert NUC.decode(NUC.reverse_complement(ids)) == "NNACGTNACGT"


def test_encode_matches_oracle_on_every_character() -> None:
    rng = np.random.default_rng(0)
    alphabet = [chr(i) for i in range(256)] + ["é", "→"]
    s = "".join(rng.choice(alphabet, 5000))
    assert NUC.encode(s).tolist() == oracle_encode(s)
    valid = "".join(rng.choice(list("ACGTUNRYSWKMBDHVacgtunryswkmbdhv-."), 5000))
    assert NUC.encode(valid, strict=True).tolist() == oracle_encode(valid, strict=True)
    assert NUC.encode(valid.encode()).tolist() == oracle_encode(valid)  # bytes input


@pytest.mark.parametrize("seq,pos,char", [("ACGTXACGT", 4, "X"), ("ACGT ACGT", 4, " "), ("ACé", 2, "é"),
                                          ("*", 0, "*")])
def test_strict_names_position(seq: str, pos: int, char: str) -> None:
    with pytest.raises(InputError, match=f"position {pos + 1} ") as err:
        NUC.encode(seq, strict=True)
    assert err.value.position == pos and err.value.char == char
    assert "strict=False" in str(err.value)
    assert NUC.encode(seq)[pos] == NUC.n_id  # lenient: N


def test_round_trip_random_and_real() -> None:
    rng = np.random.default_rng(1)
    s = "".join(rng.choice(list("ACGTN"), 10000))
    assert NUC.decode(NUC.encode(s)) == s
    ids = rng.integers(0, 9, 1000).astype(np.uint8)
    assert np.array_equal(NUC.encode(NUC.decode(ids).replace("_", "N").replace("?", "N").replace("!", "N")
                                     .replace("|", "N")), np.where(ids < 4, 8, ids))
    seq = next(read_records(DATA / "phiX174_NC_001422.1.fa")).sequence
    assert NUC.decode(NUC.encode(seq)) == seq.upper()
    assert NUC.decode(np.array([0, 1, 2, 3, 4]), skip_special=True) == "A"


def test_reverse_complement_known_and_involution() -> None:
    assert NUC.decode(NUC.reverse_complement(NUC.encode("AACGTN"))) == "NACGTT"
    assert NUC.decode(NUC.reverse_complement(NUC.encode("GATTACA"))) == "TGTAATC"
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 9, 10001).astype(np.uint8)
    rc = NUC.reverse_complement(ids)
    assert np.array_equal(NUC.reverse_complement(rc), ids)
    assert np.array_equal(rc[::-1][ids < 4], ids[ids < 4])  # specials stay, position mirrored
    assert np.array_equal(NUC.reverse_complement(ids.astype(np.int64)), rc.astype(np.int64))


@pytest.mark.parametrize("name", ["phiX174_NC_001422.1.fa", "Human_mito_NC_001807.fa"])
def test_reverse_complement_matches_biopython(name: str) -> None:
    rec = SeqIO.read(DATA / name, "fasta")
    expected = str(rec.seq.reverse_complement()).upper()
    assert NUC.decode(NUC.reverse_complement(NUC.encode(str(rec.seq)))) == expected


def test_byte_tokenizer() -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    ids = BYTE.encode(data)
    assert ids.dtype == np.uint16 and np.array_equal(ids, np.frombuffer(data, np.uint8).astype(np.uint16) + 4)
    assert BYTE.decode_bytes(ids) == data
    assert BYTE.decode(BYTE.encode("héllo ACGT")) == "héllo ACGT"
    assert np.array_equal(BYTE.reverse_complement(BYTE.reverse_complement(ids)), ids)
    text = "ACGTRYKMBVDHNacgtnSWsw"
    assert BYTE.decode(BYTE.reverse_complement(BYTE.encode(text))) == str(Seq(text).reverse_complement())
    assert BYTE.decode(BYTE.reverse_complement(BYTE.encode("x!A"))) == "T!x"


def test_softmask() -> None:
    seq = next(read_records(DATA / "Human_hg19_chr17_part_40kb.fa")).sequence
    ids, soft = NUC.encode_with_softmask(seq)
    assert np.array_equal(ids, NUC.encode(seq))
    assert soft.tolist() == [c.islower() for c in seq] and 0 < soft.sum() < len(seq)
    _, bsoft = BYTE.encode_with_softmask(seq)
    assert np.array_equal(bsoft, soft)


def test_spec_round_trip_and_errors() -> None:
    for tok in (NUC, BYTE):
        spec = json.loads(json.dumps(tok.spec()))
        again = tokenizer_from_spec(spec)
        assert type(again) is type(tok) and again.spec() == tok.spec()
    assert isinstance(make_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(CheckpointError, match="unknown tokenizer kind 'protein'"):
        tokenizer_from_spec({"kind": "protein"})
    with pytest.raises(CheckpointError, match="vocab_size"):
        tokenizer_from_spec({**NUC.spec(), "vocab_size": 16})
    with pytest.raises(InputError, match="nucleotide, byte"):
        make_tokenizer("rna")
