"""Sequence inputs at scale: files, directories and list files.

A genome collection (a metagenome's bins, thousands of assemblies) does not fit a command line.
Wherever a command takes several sequence files, each item may be:

* a FASTA or GenBank file (plain or gzipped), taken as it is;
* a directory: every sequence file below it (by suffix, see :data:`SEQUENCE_SUFFIXES`), in
  sorted path order, so the same folder always gives the same order;
* ``@LIST``: a text file with one path per line (``#`` starts a comment; relative paths are
  relative to the list file), each of which may itself be a file or a directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import InputError
from .fasta import FASTA_EXTS, GENBANK_EXTS
from ..types import PathLike

SEQUENCE_SUFFIXES = FASTA_EXTS + GENBANK_EXTS


def is_sequence_file(path: Path) -> bool:
    """Whether ``path``'s name ends in a sequence suffix (optionally followed by ``.gz``)."""
    name = path.name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return name.endswith(SEQUENCE_SUFFIXES)


def _from_directory(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.is_file() and is_sequence_file(p))
    if not found:
        raise InputError(f"{folder}: a directory with no sequence files in it (looked for "
                         f"{', '.join(SEQUENCE_SUFFIXES)}, optionally .gz, in every subfolder)")
    return found


def _from_list(list_file: Path) -> list[Path]:
    if not list_file.is_file():
        raise InputError(f"@{list_file}: no such list file; a list file holds one FASTA path per line")
    out: list[Path] = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        path = Path(entry) if Path(entry).is_absolute() else list_file.parent / entry
        if not path.exists():
            raise InputError(f"{list_file}, line {n}: {entry}: no such file or directory "
                             f"(relative paths are read from the list file's folder)")
        out += _from_directory(path) if path.is_dir() else [path]
    if not out:
        raise InputError(f"@{list_file}: the list names no files (one path per line; # starts a comment)")
    return out


def expand_sequence_inputs(items: Iterable[PathLike]) -> list[Path]:
    """Files, directories and ``@LIST`` files as the list of sequence files they name (see the
    module docstring); a missing file, an empty directory or an empty list is an InputError."""
    out: list[Path] = []
    for item in items:
        text = str(item)
        if text.startswith("@") and not Path(text).exists():
            out += _from_list(Path(text[1:]))
            continue
        path = Path(text)
        if path.is_dir():
            out += _from_directory(path)
        elif path.exists():
            out.append(path)
        else:
            raise InputError(f"{path}: file not found; pass FASTA/GenBank files, directories of "
                             f"them, or @LIST (a file of paths, one per line)")
    return out


def load_sequences(inputs, tokenizer=None, strict: bool = False, use_cache: bool = True) -> list:
    """Every record of ``inputs`` (a file, or files, directories and ``@LIST`` files, see
    :func:`expand_sequence_inputs`), encoded, in input order. Record ids must be unique across
    files (outputs are keyed by them): a repeated id is an InputError naming both files."""
    from .encoded import load_genome

    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    records = []
    seen: dict[str, Path] = {}  # record id -> the file it came from
    for path in expand_sequence_inputs(items):
        for rec in load_genome(path, tokenizer, strict=strict, use_cache=use_cache):
            if rec.id in seen and seen[rec.id] != path:
                raise InputError(f"{path}: record {rec.id!r} is also in {seen[rec.id]}; record ids must be unique "
                                 f"across the input files (rename one)")
            seen.setdefault(rec.id, path)
            records.append(rec)
    return records


def describe_inputs(inputs) -> str:
    """``inputs`` as one string for reports: the path, or the paths joined by commas."""
    return str(inputs) if isinstance(inputs, (str, os.PathLike)) else ", ".join(map(str, inputs))
