"""Tokenizers: DNA letters or raw bytes to token ids, vectorised through 256-entry lookup tables.

Token ids (fixed; saved with every checkpoint through :meth:`spec`):

==========  ===  =============================================================
token       id   meaning
==========  ===  =============================================================
``pad``     0    padding after a short window; never a prediction target
``mask``    1    the masked objective's ``[MASK]``
``unk``     2    reserved for "unknown" (the readers map unknowns to N instead)
``sep``     3    record separator / beginning of sequence (reserved)
==========  ===  =============================================================

:class:`NucleotideTokenizer` (``vocab_size`` 9): ``A=4, C=5, G=6, T=7, N=8``.

* lowercase (soft-masked repeats) reads as uppercase; :meth:`~NucleotideTokenizer.encode_with_softmask`
  also returns the lowercase positions as a boolean mask;
* ``U`` reads as ``T``; the IUPAC ambiguity codes ``R Y S W K M B D H V N`` and the gap symbols
  ``-`` and ``.`` read as ``N``;
* any other character is an error in strict mode (:class:`InvalidCharacterError`, naming the
  position) and ``N`` in lenient mode (the default);
* ``N`` is never a prediction target: :attr:`~NucleotideTokenizer.base_ids` is ``(4, 5, 6, 7)``.

:class:`ByteTokenizer` (``vocab_size`` 260): byte ``b`` has id ``4 + b``, for byte-level modelling
of any file. Every byte is a prediction target; there is no N policy and no error case.

``tokenizer_from_spec(tok.spec())`` rebuilds a tokenizer from its JSON-serialisable spec.
"""
from __future__ import annotations

from typing import Any, Iterable, Union

import numpy as np

from ..errors import CheckpointError, InputError

PAD_ID, MASK_ID, UNK_ID, SEP_ID = 0, 1, 2, 3
N_SPECIAL = 4
# The nucleotide ids, the one place they are stated: A C G T are consecutive from A_ID, in
# BASES order (so ``id - A_ID`` is a base's channel 0-3 and the complement of channel i is 3 - i).
BASES = "ACGT"
N_BASES = len(BASES)
A_ID = N_SPECIAL
C_ID, G_ID, T_ID = A_ID + 1, A_ID + 2, A_ID + 3
BASE_IDS: tuple[int, ...] = tuple(range(A_ID, A_ID + N_BASES))  # (4, 5, 6, 7): the prediction targets
N_ID = A_ID + N_BASES
SPECIAL_TOKENS = {"pad": PAD_ID, "mask": MASK_ID, "unk": UNK_ID, "sep": SEP_ID}
# How decode() shows special tokens (one character each, so lengths are kept).
_SPECIAL_SYMBOLS = {PAD_ID: "_", MASK_ID: "?", UNK_ID: "!", SEP_ID: "|"}

IUPAC_AMBIGUOUS = "RYSWKMBDHVN"
GAP_SYMBOLS = "-."
_INVALID = 255  # lookup-table marker for characters outside IUPAC

SeqLike = Union[str, bytes, bytearray, memoryview, np.ndarray]  # or a Bio.Seq.Seq
TokenIds = Union[np.ndarray, Iterable[int]]


class InvalidCharacterError(InputError):
    """A character outside the tokenizer's alphabet (strict mode); the reader adds file and record."""

    def __init__(self, char: str, position: int, expected: str) -> None:
        self.char, self.position, self.expected = char, position, expected
        head = (f"invalid character {char!r} at position {position + 1:,} (1-based); expected {expected}; "
                "fix the sequence")
        super().__init__(f"{head}, or pass strict=False (config data.strict: false) to read it as N",
                         cli_message=f"{head}, or leave out --strict (and data.strict: true from a --config) to "
                                     f"read it as N")


def _as_bytes(seq: SeqLike) -> np.ndarray:
    """``seq`` as a uint8 array of character codes (a view where possible); shape (L,)."""
    if isinstance(seq, np.ndarray):
        if seq.dtype != np.uint8:
            raise TypeError(f"expected a uint8 array of character codes, got dtype {seq.dtype}")
        return seq.reshape(-1)
    if isinstance(seq, str):
        # One byte per character: ASCII is the common case; other characters become '?' (invalid).
        seq = seq.encode("ascii", errors="replace")
    elif not isinstance(seq, (bytes, bytearray, memoryview)):
        seq = bytes(seq)  # e.g. a Bio.Seq.Seq
    return np.frombuffer(seq, dtype=np.uint8)


def _as_ids(ids: TokenIds) -> np.ndarray:
    if hasattr(ids, "detach"):  # a torch tensor
        ids = ids.detach().cpu().numpy()
    return np.asarray(ids).reshape(-1)


def _int_dtype(ids: np.ndarray, default: type) -> np.dtype:
    """Keep an integer input's dtype (uint8 stays uint8, int64 from torch stays int64)."""
    return ids.dtype if ids.dtype.kind in "ui" else np.dtype(default)


class NucleotideTokenizer:
    """DNA/RNA letters to ids ``A=4 C=5 G=6 T=7 N=8`` (specials 0-3); see the module docstring."""

    kind = "nucleotide"
    version = 1
    vocab_size = N_ID + 1  # 9
    pad_id, mask_id, unk_id, sep_id = PAD_ID, MASK_ID, UNK_ID, SEP_ID
    a_id, c_id, g_id, t_id, n_id = A_ID, C_ID, G_ID, T_ID, N_ID
    base_ids: tuple[int, ...] = BASE_IDS  # real prediction targets
    ambiguous_ids: tuple[int, ...] = (N_ID,)  # never targets; counted by windows' max_n_fraction
    alphabet = BASES + "N"
    expected = "IUPAC nucleotide codes (ACGTU, RYSWKMBDHVN, gaps - .; any case)"

    def __init__(self) -> None:
        table = np.full(256, _INVALID, dtype=np.uint8)
        for base, i in zip(BASES, BASE_IDS):
            table[ord(base)] = table[ord(base.lower())] = i
        for ch in "Uu":
            table[ord(ch)] = self.t_id
        for ch in IUPAC_AMBIGUOUS + IUPAC_AMBIGUOUS.lower() + GAP_SYMBOLS:
            table[ord(ch)] = self.n_id
        self._table = table
        self._lenient = np.where(table == _INVALID, self.n_id, table).astype(np.uint8)
        self._lower = np.zeros(256, dtype=bool)
        self._lower[ord("a"):ord("z") + 1] = True
        symbols = np.frombuffer(b"_?!|ACGTN", dtype=np.uint8)
        self._symbols = symbols.copy()
        comp = np.arange(self.vocab_size, dtype=np.uint8)
        comp[[self.a_id, self.c_id, self.g_id, self.t_id]] = [self.t_id, self.g_id, self.c_id, self.a_id]
        self._complement = comp
        self.target_table = np.zeros(self.vocab_size, dtype=bool)  # id -> is a prediction target
        self.target_table[list(self.base_ids)] = True

    # ------------------------------------------------------------------ encoding
    def encode(self, seq: SeqLike, strict: bool = False) -> np.ndarray:
        """Letters to ids; shape (L,) uint8. Strict: characters outside IUPAC raise
        :class:`InvalidCharacterError`; lenient: they read as N."""
        codes = _as_bytes(seq)
        if not strict:
            return self._lenient[codes]
        ids = self._table[codes]
        bad = np.flatnonzero(ids == _INVALID)
        if bad.size:
            pos = int(bad[0])
            char = seq[pos] if isinstance(seq, str) else chr(codes[pos])
            raise InvalidCharacterError(char, pos, self.expected)
        return ids

    def encode_with_softmask(self, seq: SeqLike, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`encode`, plus a bool array (L,) that is True where the input was lowercase."""
        return self.encode(seq, strict), self._lower[_as_bytes(seq)]

    def invalid_characters(self, seq: SeqLike) -> tuple[int, int]:
        """(how many characters are outside IUPAC, 0-based position of the first or -1): what
        lenient :meth:`encode` reads as N without a word."""
        bad = np.flatnonzero(self._table[_as_bytes(seq)] == _INVALID)
        return int(bad.size), int(bad[0]) if bad.size else -1

    # ------------------------------------------------------------------ decoding and strands
    def decode(self, ids: TokenIds, skip_special: bool = False) -> str:
        """Ids to letters ``ACGTN``; specials show as ``_ ? ! |`` (pad, mask, unk, sep) or are dropped."""
        ids = _as_ids(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        if skip_special:
            ids = ids[ids >= N_SPECIAL]
        return self._symbols[ids.astype(np.intp)].tobytes().decode("ascii")

    def reverse_complement(self, ids: TokenIds) -> np.ndarray:
        """Ids of the reverse complement: A<->T, C<->G, N and specials unchanged, order reversed."""
        ids = _as_ids(ids)
        return self._complement[ids[::-1].astype(np.intp)].astype(_int_dtype(ids, np.uint8))

    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable description; :func:`tokenizer_from_spec` rebuilds the tokenizer."""
        return {"kind": self.kind, "version": self.version, "vocab_size": self.vocab_size,
                "special": dict(SPECIAL_TOKENS), "alphabet": self.alphabet}

    def __repr__(self) -> str:
        return "NucleotideTokenizer(vocab_size=9, A=4 C=5 G=6 T=7 N=8)"


class ByteTokenizer:
    """Raw bytes to ids ``4 + byte`` (specials 0-3); ``vocab_size`` 260; ids are uint16."""

    kind = "byte"
    version = 1
    vocab_size = 260
    pad_id, mask_id, unk_id, sep_id = PAD_ID, MASK_ID, UNK_ID, SEP_ID
    base_ids: tuple[int, ...] = tuple(range(N_SPECIAL, 260))  # every byte is a target
    ambiguous_ids: tuple[int, ...] = ()

    def __init__(self) -> None:
        self._table = np.arange(N_SPECIAL, N_SPECIAL + 256, dtype=np.uint16)
        comp = np.arange(self.vocab_size, dtype=np.uint16)
        # Complement DNA letters (both cases, IUPAC pairs); every other byte maps to itself.
        for a, b in ("AT", "CG", "RY", "KM", "BV", "DH", "at", "cg", "ry", "km", "bv", "dh"):
            comp[N_SPECIAL + ord(a)], comp[N_SPECIAL + ord(b)] = N_SPECIAL + ord(b), N_SPECIAL + ord(a)
        self._complement = comp
        self.target_table = np.zeros(self.vocab_size, dtype=bool)
        self.target_table[N_SPECIAL:] = True

    def encode(self, seq: SeqLike, strict: bool = False) -> np.ndarray:
        """Bytes (str: UTF-8) to ids ``4 + b``; shape (L,) uint16. ``strict`` has no effect."""
        if isinstance(seq, str):
            seq = seq.encode("utf-8")
        return self._table[_as_bytes(seq)]

    def invalid_characters(self, seq: SeqLike) -> tuple[int, int]:
        """Always ``(0, -1)``: every byte has a token."""
        return 0, -1

    def encode_with_softmask(self, seq: SeqLike, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`encode`, plus a bool array (L,) that is True at lowercase ASCII letters."""
        codes = _as_bytes(seq.encode("utf-8") if isinstance(seq, str) else seq)
        return self._table[codes], (codes >= ord("a")) & (codes <= ord("z"))

    def decode_bytes(self, ids: TokenIds) -> bytes:
        """Ids to the original bytes; special tokens are dropped (they have no byte)."""
        ids = _as_ids(ids).astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        return (ids[ids >= N_SPECIAL] - N_SPECIAL).astype(np.uint8).tobytes()

    def decode(self, ids: TokenIds, skip_special: bool = True) -> str:
        """Ids to text (UTF-8, undecodable bytes as U+FFFD); special tokens are dropped."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def reverse_complement(self, ids: TokenIds) -> np.ndarray:
        """Reverse the order and complement DNA letters (A<->T, C<->G, IUPAC pairs, both cases)."""
        ids = _as_ids(ids)
        return self._complement[ids[::-1].astype(np.intp)].astype(_int_dtype(ids, np.uint16))

    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable description; :func:`tokenizer_from_spec` rebuilds the tokenizer."""
        return {"kind": self.kind, "version": self.version, "vocab_size": self.vocab_size,
                "special": dict(SPECIAL_TOKENS)}

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=260, byte b -> 4 + b)"


Tokenizer = Union[NucleotideTokenizer, ByteTokenizer]
_KINDS: dict[str, type[NucleotideTokenizer] | type[ByteTokenizer]] = {"nucleotide": NucleotideTokenizer,
                                                                  "byte": ByteTokenizer}


def make_tokenizer(alphabet: str) -> Tokenizer:
    """The tokenizer for ``DataConfig.alphabet`` (``nucleotide`` or ``byte``)."""
    if alphabet not in _KINDS:
        raise InputError(f"unknown alphabet {alphabet!r}; use one of {', '.join(_KINDS)}")
    return _KINDS[alphabet]()


def tokenizer_from_spec(spec: dict[str, Any]) -> Tokenizer:
    """Rebuild the tokenizer that wrote ``spec``; an unknown or inconsistent spec raises CheckpointError."""
    if not isinstance(spec, dict) or spec.get("kind") not in _KINDS:
        kind = spec.get("kind") if isinstance(spec, dict) else spec
        raise CheckpointError(f"unknown tokenizer kind {kind!r} in the checkpoint's tokenizer spec; "
                              f"expected one of {', '.join(_KINDS)} (was it written by a newer seqformer?)")
    tok = _KINDS[spec["kind"]]()
    mine = tok.spec()
    for key in ("version", "vocab_size", "special", "alphabet"):
        if key in spec and spec[key] != mine.get(key):
            raise CheckpointError(f"tokenizer spec has {key}={spec[key]!r} but this seqformer's {tok.kind} "
                                  f"tokenizer has {mine.get(key)!r}; use the seqformer version that wrote it")
    return tok
