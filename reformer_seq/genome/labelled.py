"""Labelled sequences for fine-tuning: reading them, checking them, splitting them.

Two input forms:

* a **TSV** with a header, a ``label`` column and either a ``sequence`` column (the bases) or an
  ``id`` column naming records of a FASTA/GenBank file passed as ``fasta`` (an optional ``id``
  column beside ``sequence`` names the rows; otherwise they are ``row1, row2, ...``);
* **labelled FASTA files**, ``NAME=FILE`` (one per class; every record of FILE gets label NAME).

The task is ``classify`` or ``regress``; ``infer_task`` decides it when it is obvious (labels
that are not all numbers: classify; numbers with a fractional part, or more than
:data:`MAX_INTEGER_CLASSES` distinct integers: regress; a few distinct integers such as 0/1:
classify). Bad input raises :class:`~reformer_seq.errors.InputError` naming the file, the row or
record, and the fix.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import ConfigError, InputError
from .tokenizers import InvalidCharacterError, Tokenizer
from ..types import PathLike

TASKS = ("classify", "regress")
MAX_INTEGER_CLASSES = 10
MAX_SHOWN = 3  # ids shown in an error message


@dataclass
class LabelledSet:
    """Sequences (token ids) with their labels, in input order."""

    ids: list[str]
    tokens: list[np.ndarray]
    labels: list[str]  # as written in the input; converted by :func:`encode_labels`
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Union[Sequence[int], np.ndarray]) -> LabelledSet:
        return LabelledSet([self.ids[i] for i in index], [self.tokens[i] for i in index],
                           [self.labels[i] for i in index], self.source)


def _as_float(text: str) -> Optional[float]:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def encode_checked(tokenizer: Tokenizer, seq: str, strict: bool, where: str) -> np.ndarray:
    """``tokenizer.encode(seq, strict)``; a character outside IUPAC (strict) is an error naming ``where``."""
    try:
        return tokenizer.encode(seq, strict=strict)
    except InvalidCharacterError as e:
        raise InputError(f"{where}: {e}", cli_message=f"{where}: {e.for_cli()}") from None


def _records_by_id(fasta: PathLike, tokenizer: Tokenizer, strict: bool = False) -> dict[str, np.ndarray]:
    from .fasta import read_records

    return {r.id: encode_checked(tokenizer, r.sequence, strict, f"{fasta}: record {r.id!r}")
            for r in read_records(fasta)}


def _tsv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise InputError(f"{path}: no such labelled TSV file")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r and not r[0].startswith("#")]
    if not rows:
        raise InputError(f"{path}: empty; expected a header line (sequence<TAB>label, or id<TAB>label with "
                         f"--fasta) and one row per sequence")
    return [h.strip().lower() for h in rows[0]], rows[1:]


def read_tsv(path: PathLike, tokenizer: Tokenizer, fasta: Optional[PathLike] = None, strict: bool = False
             ) -> LabelledSet:
    """Read a labelled TSV (see the module docstring); ``strict``: characters outside IUPAC are an error."""
    path = Path(path)
    header, rows = _tsv_rows(path)
    if "label" not in header or ("sequence" not in header and "id" not in header):
        raise InputError(f"{path}: header {header} needs a 'label' column and a 'sequence' column (bases) or "
                         f"an 'id' column (record ids of the file given with --fasta)")
    use_ids = "sequence" not in header
    if use_ids and fasta is None:
        raise InputError(f"{path}: has an 'id' column but no 'sequence' column; pass the FASTA holding those "
                         f"records with --fasta")
    col = {name: header.index(name) for name in ("label", "sequence", "id") if name in header}
    records = _records_by_id(fasta, tokenizer, strict) if use_ids and fasta is not None else {}
    ids, toks, labels, unknown = [], [], [], []
    for n, row in enumerate(rows, start=2):
        if len(row) < len(header):
            raise InputError(f"{path}: line {n} has {len(row)} fields, the header has {len(header)}")
        rid = row[col["id"]].strip() if "id" in col else f"row{n - 1}"
        if use_ids:
            if rid not in records:
                unknown.append(rid)
                continue
            toks.append(records[rid])
        else:
            toks.append(encode_checked(tokenizer, row[col["sequence"]].strip(), strict, f"{path}: line {n}"))
        ids.append(rid)
        labels.append(row[col["label"]].strip())
    if unknown:
        raise InputError(f"{path}: {len(unknown)} id(s) not in {fasta} (e.g. {', '.join(unknown[:MAX_SHOWN])}); "
                         f"the ids must match the FASTA record ids (the first word of each '>' line)")
    return _checked(LabelledSet(ids, toks, labels, str(path)))


def read_class_fastas(specs: Sequence[str], tokenizer: Tokenizer, strict: bool = False) -> LabelledSet:
    """Read ``NAME=FILE`` specs: every record of FILE is labelled NAME (``strict``: as :func:`read_tsv`)."""
    from .fasta import read_records

    ids: list[str] = []
    toks: list[np.ndarray] = []
    labels: list[str] = []
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise ConfigError(f"--class {spec!r}: expected NAME=FILE, e.g. --class promoter=promoters.fa")
        n0 = len(ids)
        for r in read_records(file):
            ids.append(r.id)
            toks.append(encode_checked(tokenizer, r.sequence, strict, f"{file}: record {r.id!r}"))
            labels.append(name)
        if len(ids) == n0:
            raise InputError(f"{file}: no records for class {name!r}")
    return _checked(LabelledSet(ids, toks, labels, ", ".join(specs)))


def _checked(data: LabelledSet) -> LabelledSet:
    if len(data) == 0:
        raise InputError(f"{data.source}: no labelled sequences")
    for rid, t, lab in zip(data.ids, data.tokens, data.labels):
        if t.size == 0:
            raise InputError(f"{data.source}: sequence {rid!r} is empty")
        if not lab:
            raise InputError(f"{data.source}: sequence {rid!r} has an empty label")
    return data


def check_lengths(data: LabelledSet, max_len: int) -> None:
    """Every sequence must fit the model in one pass."""
    too_long = [(rid, len(t)) for rid, t in zip(data.ids, data.tokens) if len(t) > max_len]
    if too_long:
        shown = ", ".join(f"{rid} ({n:,} bases)" for rid, n in too_long[:MAX_SHOWN])
        raise InputError(f"{data.source}: {len(too_long)} sequence(s) longer than the model's max_seq_len "
                         f"{max_len:,}: {shown}; each is scored in one pass, so cut them into pieces of at most "
                         f"{max_len:,} bases (e.g. seqkit sliding -W {max_len} -s {max_len})")


def infer_task(labels: Sequence[str], task: Optional[str] = None) -> str:
    """``task`` if given (checked), else classify or regress from the labels (module docstring)."""
    if task is not None:
        if task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
        return task
    values = [v for v in map(_as_float, labels) if v is not None]
    if len(values) < len(labels):  # a label that is not a number
        return "classify"
    distinct = set(values)
    if all(v.is_integer() for v in distinct) and len(distinct) <= MAX_INTEGER_CLASSES:
        return "classify"
    return "regress"


def class_names(labels: Sequence[str]) -> list[str]:
    """The classes in a stable order: numerically if all labels are numbers, else alphabetically."""
    distinct = set(labels)
    if all(_as_float(v) is not None for v in distinct):
        return sorted(distinct, key=lambda v: float(v))
    return sorted(distinct)


def encode_labels(data: LabelledSet, task: str, classes: Optional[Sequence[str]] = None) -> np.ndarray:
    """Class indices (int64) for ``classify`` (``classes`` in order; at least two), floats for ``regress``."""
    if task == "regress":
        out = np.empty(len(data), np.float32)
        for i, (rid, lab) in enumerate(zip(data.ids, data.labels)):
            v = _as_float(lab)
            if v is None:
                raise InputError(f"{data.source}: label {lab!r} of {rid!r} is not a number; regression needs "
                                 f"numeric labels (use --task classify for class names)")
            out[i] = v
        return out
    classes = list(classes) if classes is not None else class_names(data.labels)
    if len(classes) < 2:
        raise InputError(f"{data.source}: only one class ({classes[0]!r}); classification needs at least two "
                         f"(add sequences of another class, e.g. another --class NAME=FILE)")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(data.labels) - set(index))
    if unknown:
        raise InputError(f"{data.source}: label(s) {unknown[:MAX_SHOWN]} not among the training classes {classes}")
    return np.array([index[v] for v in data.labels], np.int64)


def split_validation(labels: np.ndarray, fraction: float, seed: int, stratify: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices: a seeded random ``fraction`` of the rows (per class when
    ``stratify``), at least one row on each side."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify else [np.arange(len(labels))]
    val = []
    for g in groups:
        k = int(round(fraction * len(g)))
        if len(g) > 1:
            val.append(rng.permutation(g)[:max(1, min(k, len(g) - 1))])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], np.int64)
    if len(val_idx) == 0 or len(val_idx) == len(labels):
        raise InputError(f"too few sequences ({len(labels)}) for a validation split; add sequences or pass --val FILE")
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx
