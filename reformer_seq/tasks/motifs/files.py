"""Motif files: JASPAR, MEME, TRANSFAC and PFM read with ``Bio.motifs`` into :class:`Motif` count
matrices, and motifs selected by id or name. See the package docstring for the details."""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ...errors import InputError
from ...genome.tokenizers import BASES
from ...types import PathLike

LETTERS = BASES  # the column order of every motif, the tokenizer's A C G T
NOMINAL_SITES = 20.0  # sites assumed for a frequency-only matrix (MEME's default nsites)
DEFAULT_PSEUDOCOUNT = 1.0
DEFAULT_THRESHOLD = "p:1e-5"
SCORE_GRID = 1e-3  # bits; resolution of the score distribution behind p-value thresholds

FORMATS = {"jaspar": "jaspar", "meme": "minimal", "minimal": "minimal", "meme-xml": "meme",
           "transfac": "transfac", "pfm": "pfm"}
_EXTENSIONS = {".jaspar": "jaspar", ".jsp": "jaspar", ".meme": "meme", ".transfac": "transfac",
               ".dat": "transfac", ".tf": "transfac", ".pfm": "pfm", ".xml": "meme-xml"}
EXPECTED = "a JASPAR (.jaspar), MEME (.meme), TRANSFAC (.transfac/.dat) or PFM (.pfm) motif file"


# A C G T background frequencies: a sequence, an array or a {letter: frequency} dict.
Background = Union[Sequence[float], dict, np.ndarray]


# ---------------------------------------------------------------------- motifs
@dataclass
class Motif:
    """One motif: ``counts`` (W, 4) float in ``A C G T`` order; ``id`` (e.g. ``MA0139.2``), ``name``."""

    id: str
    name: str
    counts: np.ndarray
    source: str = ""
    bio: object = field(default=None, repr=False, compare=False)  # the Bio.motifs object it came from

    @property
    def length(self) -> int:
        return int(self.counts.shape[0])

    @property
    def label(self) -> str:
        return f"{self.id} {self.name}".strip() if self.name and self.name != self.id else self.id

    def probabilities(self, background: Background, pseudocount: float = DEFAULT_PSEUDOCOUNT) -> np.ndarray:
        """Letter probabilities (W, 4) with ``pseudocount`` spread over the letters as ``background``."""
        b = as_background(background)
        n = self.counts.sum(axis=1, keepdims=True)
        return (self.counts + pseudocount * b) / (n + pseudocount)

    def information_content(self, background: Background = (0.25, 0.25, 0.25, 0.25),
                            pseudocount: float = DEFAULT_PSEUDOCOUNT) -> np.ndarray:
        """Bits per column (W,): relative entropy of the column's letters against ``background``."""
        b = as_background(background)
        p = self.probabilities(b, pseudocount)
        return (p * np.log2(p / b)).sum(axis=1)

    def consensus(self) -> str:
        return "".join(LETTERS[i] for i in self.counts.argmax(axis=1))


def as_background(background: Background) -> np.ndarray:
    if isinstance(background, dict):
        background = [background[letter] for letter in LETTERS]
    b = np.asarray(background, dtype=np.float64).reshape(4)
    if np.any(b <= 0):
        raise InputError(f"background frequencies must all be > 0, got {b.tolist()}")
    return b / b.sum()


def _counts_matrix(bio_motif, where: str) -> np.ndarray:
    try:
        counts = np.array([[float(bio_motif.counts[letter][i]) for letter in LETTERS]
                           for i in range(bio_motif.length)], dtype=np.float64)
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{where}: motif has no A/C/G/T count matrix ({e}); only DNA motifs are supported") from None
    if counts.size == 0 or np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise InputError(f"{where}: motif matrix is empty or has negative/non-finite entries")
    sums = counts.sum(axis=1)
    if np.any(sums <= 0):
        raise InputError(f"{where}: motif has a column with no counts (column {int(np.argmin(sums)) + 1})")
    if sums.max() <= 1.01:  # a frequency matrix: give it a nominal number of sites
        counts = counts / sums[:, None] * NOMINAL_SITES
    return counts


def detect_format(path: PathLike) -> str:
    """The motif format of ``path`` (a key of :data:`FORMATS`) from its extension, else its content."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    for s in reversed(suffixes):
        if s in _EXTENSIONS:
            return _EXTENSIONS[s]
    head = path.read_text(errors="replace")[:4096].lstrip()
    if head.startswith("<?xml") or head.startswith("<MEME"):
        return "meme-xml"
    if head.startswith("MEME version"):
        return "meme"
    if head.startswith(">"):
        return "jaspar"
    if re.match(r"^(AC|ID|NA|DE|P0|PO|VV|XX)\b", head):
        return "transfac"
    first = head.splitlines()[0][:40] if head else ""
    raise InputError(f"{path}: cannot tell the motif format (first line {first!r}); expected {EXPECTED}, "
                     f"or name the format explicitly")


def _meme_names(path: Path) -> list[tuple[str, str]]:
    """``(id, alt name)`` of each ``MOTIF`` line of a MEME text file, in order (Bio drops the alt name)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"^MOTIF\s+(\S+)(?:\s+(\S+))?", line)
        if m:
            out.append((m.group(1), m.group(2) or ""))
    return out


def read_motifs(path: PathLike, format: Optional[str] = None) -> list[Motif]:
    """Every motif in one file (JASPAR, MEME, TRANSFAC or PFM; see the module docstring)."""
    from Bio import motifs as bio_motifs

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: motif file not found; expected {EXPECTED} "
                         f"(JASPAR 2024 vertebrates: ../shared/data/motifs/JASPAR2024_CORE_vertebrates.jaspar)")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected {EXPECTED}")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file; expected {EXPECTED}")
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown motif format {fmt!r}; use one of {', '.join(FORMATS)}")
    try:
        with open(path, errors="replace") as handle:
            if fmt == "pfm":
                parsed = [bio_motifs.read(handle, "pfm")]
            else:
                parsed = list(bio_motifs.parse(handle, FORMATS[fmt]))
    except Exception as e:  # Bio raises ValueError, KeyError, IndexError... on malformed input
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a valid {fmt.upper()} motif file ({msg}); expected {EXPECTED}") from None
    if not parsed:
        raise InputError(f"{path}: no motifs found; expected {EXPECTED}")
    alt = _meme_names(path) if fmt == "meme" else []
    out = []
    for i, m in enumerate(parsed):
        if fmt == "jaspar":
            mid, name = m.matrix_id or m.name or f"motif{i + 1}", m.name or ""
        elif fmt == "transfac":
            mid = m.get("AC") or m.get("ID") or f"motif{i + 1}"
            name = m.get("NA") or m.get("ID") or ""
        elif fmt == "meme":
            mid = m.name or f"motif{i + 1}"
            name = alt[i][1] if i < len(alt) and alt[i][0] == mid else ""
        else:
            mid = getattr(m, "name", None) or getattr(m, "id", None) or f"{path.stem}" + (f".{i + 1}" if i else "")
            name = getattr(m, "alt_id", None) or ""
        mid, name = str(mid).strip(), str(name).strip()
        out.append(Motif(mid, name or mid, _counts_matrix(m, f"{path}: motif {mid!r} (#{i + 1})"), str(path), m))
    return out


def _id_matches(query: str, motif: Motif) -> bool:
    q = query.strip().lower()
    mid = motif.id.lower()
    return q == mid or q == mid.split(".")[0] or q == motif.name.lower()


def select_motifs(motifs: Sequence[Motif], ids: Optional[Iterable[str]], where: str = "the motif files") -> list[Motif]:
    """The motifs named by ``ids`` (id with or without version, or name), in file order.

    ``ids`` None or empty keeps all. An id that matches nothing raises InputError with suggestions.
    """
    ids = [i.strip() for i in (ids or []) if i and i.strip()]
    if not ids:
        return list(motifs)
    missing = [q for q in ids if not any(_id_matches(q, m) for m in motifs)]
    if missing:
        names = sorted({m.id for m in motifs} | {m.name for m in motifs})
        hints = []
        for q in missing[:3]:
            close = difflib.get_close_matches(q, names, n=3, cutoff=0.6)
            if close:
                hints.append(f"{q!r}: did you mean {', '.join(close)}?")
        example = ", ".join(m.label for m in motifs[:3])
        raise InputError(f"motif id(s) {', '.join(repr(q) for q in missing)} not found in {where} "
                         f"({len(motifs)} motifs, e.g. {example}); " + (" ".join(hints) + " " if hints else "")
                         + "give matrix ids (MA0139.2 or MA0139) or names (CTCF)")
    return [m for m in motifs if any(_id_matches(q, m) for q in ids)]


def load_motifs(paths: Union[PathLike, Sequence[PathLike]], ids: Optional[Iterable[str]] = None) -> list[Motif]:
    """Motifs from one or more files, optionally selected by ``ids``; the first motif with a given id wins."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise InputError(f"no motif file given; expected {EXPECTED}")
    seen, out = set(), []
    for p in paths:
        for m in read_motifs(p):
            if m.id not in seen:
                seen.add(m.id)
                out.append(m)
    return select_motifs(out, ids, where=", ".join(str(p) for p in paths))


