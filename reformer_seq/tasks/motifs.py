"""Transcription-factor motifs: reading them with ``Bio.motifs``, PSSMs, and scanning genomes.

* :func:`read_motifs` / :func:`load_motifs` read JASPAR (``.jaspar``), MEME text ("minimal" MEME,
  ``.meme``; also MEME XML), TRANSFAC (``.transfac .dat``) and single-matrix PFM (``.pfm``) files
  through ``Bio.motifs``; a file may hold many motifs. ``ids`` selects motifs by matrix id with
  version (``MA0139.2``), without version (``MA0139``: every version) or by name (``CTCF``,
  case-insensitive). Every motif becomes a :class:`Motif` holding a (W, 4) count matrix in
  ``A C G T`` order; a frequency matrix (columns summing to about 1) is read as
  :data:`NOMINAL_SITES` sites, MEME's own default.
* :func:`make_pssm` builds a :class:`PSSM`: log2-odds ``log2(p / b)`` with
  ``p = (count + pseudocount * b) / (n + pseudocount)`` (the ``pseudocount`` is spread over the
  letters in proportion to the background ``b``; the same arithmetic as
  ``motif.counts.normalize(pseudocounts={l: pseudocount * b[l]}).log_odds(b)`` in Biopython, whose
  scores the tests compare against). The background comes from the scanned sequences' base
  composition (:func:`background_from_records`), made strand-symmetric (``A = T``, ``C = G``) so
  that both strands are scored against the same background.
* :func:`scan_records` scores every position on both strands with numpy (one gather per motif
  column, in chunks, so a bacterial genome takes a fraction of a second per motif); windows that
  contain N (or any non-ACGT token) never score. A minus-strand site ``[start, end)`` is one whose
  reverse complement matches the motif; ``start``/``end`` are always forward-strand, 0-based,
  end-exclusive coordinates.
* :class:`Threshold`: when a score counts as a site. ``p:1e-5`` (the default, stringent) keeps
  windows whose score would be reached with probability at most 1e-5 by a random window drawn
  from the background (per strand and position, like FIMO's p-values; computed from the PSSM's
  exact score distribution on a 0.001-bit grid, with the cut raised by the largest rounding
  error so the bound holds); ``rel:0.9`` keeps scores at or above 90% of the
  way from the PSSM's minimum to its maximum; a plain number (``10`` or ``score:10``) is a
  log2-odds cut-off in bits. A p-value cut cannot be met by a motif whose best word is itself
  that likely (about 8 bases or fewer at p:1e-5: 4^-8 = 1.5e-5); such a motif gets no sites and
  an infinite cut, and the evaluation report says so. At the default, JASPAR CTCF (MA0139.2) has a site in about half of
  the GM12878 CTCF ChIP-seq peaks and in almost none of the same peaks shuffled (data/README.md).
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np

from ..errors import InputError
from ..runtime.policy import current_policy
from ..genome.fasta import EncodedRecord
from ..genome.tokenizers import NucleotideTokenizer

PathLike = Union[str, Path]
LETTERS = "ACGT"
BASE_OFFSET = NucleotideTokenizer.a_id  # token id of A; C, G, T follow
NOMINAL_SITES = 20.0  # sites assumed for a frequency-only matrix (MEME's default nsites)
DEFAULT_PSEUDOCOUNT = 1.0
DEFAULT_THRESHOLD = "p:1e-5"
SCORE_GRID = 1e-3  # bits; resolution of the score distribution behind p-value thresholds

FORMATS = {"jaspar": "jaspar", "meme": "minimal", "minimal": "minimal", "meme-xml": "meme",
           "transfac": "transfac", "pfm": "pfm"}
_EXTENSIONS = {".jaspar": "jaspar", ".jsp": "jaspar", ".meme": "meme", ".transfac": "transfac",
               ".dat": "transfac", ".tf": "transfac", ".pfm": "pfm", ".xml": "meme-xml"}
EXPECTED = "a JASPAR (.jaspar), MEME (.meme), TRANSFAC (.transfac/.dat) or PFM (.pfm) motif file"


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

    def probabilities(self, background: Sequence[float], pseudocount: float = DEFAULT_PSEUDOCOUNT) -> np.ndarray:
        """Letter probabilities (W, 4) with ``pseudocount`` spread over the letters as ``background``."""
        b = _as_background(background)
        n = self.counts.sum(axis=1, keepdims=True)
        return (self.counts + pseudocount * b) / (n + pseudocount)

    def information_content(self, background: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
                            pseudocount: float = DEFAULT_PSEUDOCOUNT) -> np.ndarray:
        """Bits per column (W,): relative entropy of the column's letters against ``background``."""
        b = _as_background(background)
        p = self.probabilities(b, pseudocount)
        return (p * np.log2(p / b)).sum(axis=1)

    def consensus(self) -> str:
        return "".join(LETTERS[i] for i in self.counts.argmax(axis=1))


def _as_background(background: Union[Sequence[float], dict, np.ndarray]) -> np.ndarray:
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
    if isinstance(paths, (str, Path)):
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


# ---------------------------------------------------------------------- background and PSSMs
def base_counts(records: Sequence[Union[EncodedRecord, np.ndarray]]) -> np.ndarray:
    """Counts of A, C, G, T (4,) int64 over the records' token ids."""
    total = np.zeros(4, dtype=np.int64)
    for rec in records:
        ids = rec.ids if isinstance(rec, EncodedRecord) else rec
        step = current_policy().motif_scan_positions
        for off in range(0, len(ids), step):
            total += np.bincount(np.asarray(ids[off:off + step]), minlength=256)[BASE_OFFSET:BASE_OFFSET + 4]
    return total


def background_from_records(records: Sequence[Union[EncodedRecord, np.ndarray]], symmetric: bool = True,
                            pseudocount: float = 1.0) -> np.ndarray:
    """Base composition (4,) of the records (A C G T), strand-symmetric by default (A=T, C=G)."""
    c = base_counts(records).astype(np.float64) + pseudocount
    if symmetric:
        c = (c + c[::-1]) / 2.0
    return c / c.sum()


@dataclass
class PSSM:
    """Log2-odds scores ``log_odds`` (W, 4) of a motif against ``background`` (4,), A C G T order."""

    motif: Motif
    log_odds: np.ndarray
    background: np.ndarray
    pseudocount: float = DEFAULT_PSEUDOCOUNT

    @property
    def length(self) -> int:
        return int(self.log_odds.shape[0])

    @property
    def max_score(self) -> float:
        return float(self.log_odds.max(axis=1).sum())

    @property
    def min_score(self) -> float:
        return float(self.log_odds.min(axis=1).sum())

    def reverse_complement(self) -> np.ndarray:
        """Log-odds (W, 4) of the reverse-complement motif (column order reversed, A<->T, C<->G)."""
        return self.log_odds[::-1, ::-1]

    def score_distribution(self, grid: float = SCORE_GRID) -> tuple[np.ndarray, float]:
        """Probabilities (K,) of each grid score under the background, and the score of bin 0."""
        q = np.rint(self.log_odds / grid).astype(np.int64)  # (W, 4)
        lo = int(q.min(axis=1).sum())
        dist = np.ones(1)
        for col in q:
            cmin = int(col.min())
            width = int(col.max()) - cmin
            new = np.zeros(dist.size + width)
            for b in range(4):
                s = int(col[b]) - cmin
                new[s:s + dist.size] += self.background[b] * dist
            dist = new
        return dist, lo * grid

    def pvalue_threshold(self, pvalue: float, grid: float = SCORE_GRID) -> float:
        """The lowest score whose tail probability ``P(S >= score)`` under the background is <= ``pvalue``."""
        dist, lo = self.score_distribution(grid)
        tail = np.cumsum(dist[::-1])[::-1]  # tail[i] = P(S >= lo + i * grid)
        ok = np.flatnonzero(tail <= pvalue)
        if not ok.size:  # even the best word is too likely (a very short or flat motif)
            return math.inf
        # Rounding moves a word's score by at most W * grid / 2: a word scoring >= this cut has a grid
        # score >= the grid cut, so the tail probability of the cut is at most ``pvalue``.
        return lo + int(ok[0]) * grid + self.length * grid / 2

    def pvalue_of(self, scores: np.ndarray, grid: float = SCORE_GRID) -> np.ndarray:
        """P-values ``P(S >= score)`` (same shape as ``scores``) under the background; an upper bound
        that is exact to within ``W * grid`` bits of score."""
        dist, lo = self.score_distribution(grid)
        tail = np.concatenate([np.cumsum(dist[::-1])[::-1], [0.0]])
        idx = np.ceil((np.asarray(scores) - lo) / grid - self.length / 2 - 1e-9)
        idx = np.clip(np.nan_to_num(idx, nan=dist.size, neginf=0), 0, dist.size).astype(np.int64)
        return tail[idx]


def make_pssm(motif: Motif, background: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
              pseudocount: float = DEFAULT_PSEUDOCOUNT) -> PSSM:
    """The motif's PSSM (log2-odds, bits) against ``background`` with ``pseudocount`` (see module docstring)."""
    b = _as_background(background)
    p = motif.probabilities(b, pseudocount)
    return PSSM(motif, np.log2(p / b), b, pseudocount)


@dataclass(frozen=True)
class Threshold:
    """When a score is a site: ``kind`` is ``pvalue``, ``relative`` or ``score`` (see module docstring)."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: Union[str, float, "Threshold", None]) -> "Threshold":
        """``p:1e-5`` / ``p=1e-5``, ``rel:0.9``, ``score:10`` or a plain number (bits)."""
        if text is None:
            text = DEFAULT_THRESHOLD
        if isinstance(text, Threshold):
            return text
        if isinstance(text, (int, float)):
            return cls("score", float(text))
        s = str(text).strip().lower().replace("=", ":")
        kinds = {"p": "pvalue", "pvalue": "pvalue", "rel": "relative", "relative": "relative",
                 "score": "score", "bits": "score"}
        kind, _, val = s.rpartition(":")
        try:
            value = float(val)
        except ValueError:
            value = None
        if value is None or (kind and kind not in kinds) or not math.isfinite(value):
            raise InputError(f"bad motif threshold {text!r}; use p:1e-5 (p-value under the background), "
                             f"rel:0.9 (relative score) or a number such as 10 (log2-odds bits)")
        kind = kinds[kind] if kind else "score"
        if kind == "pvalue" and not 0 < value < 1:
            raise InputError(f"bad motif threshold {text!r}: a p-value must be in (0, 1), e.g. p:1e-5")
        if kind == "relative" and not 0 <= value <= 1:
            raise InputError(f"bad motif threshold {text!r}: a relative score must be in [0, 1], e.g. rel:0.9")
        return cls(kind, value)

    def score_for(self, pssm: PSSM) -> float:
        """The log2-odds cut-off (bits) this threshold means for ``pssm``."""
        if self.kind == "score":
            return self.value
        if self.kind == "relative":
            return pssm.min_score + self.value * (pssm.max_score - pssm.min_score)
        return pssm.pvalue_threshold(self.value)

    def __str__(self) -> str:
        return {"pvalue": "p:", "relative": "rel:", "score": "score:"}[self.kind] + f"{self.value:g}"


# ---------------------------------------------------------------------- scanning
class Site(NamedTuple):
    """A motif hit: forward-strand ``[start, end)`` in record ``record`` (id), ``strand`` ``+``/``-``."""

    record: str
    start: int
    end: int
    strand: str
    score: float
    motif_id: str = ""
    record_index: int = 0


def _extended_table(log_odds: np.ndarray, vocab: int = 256) -> np.ndarray:
    """(W, vocab) table: log-odds at the base ids, -inf for every other token (N, specials)."""
    t = np.full((log_odds.shape[0], vocab), -np.inf)
    t[:, BASE_OFFSET:BASE_OFFSET + 4] = log_odds
    return t


def score_sequence(ids: np.ndarray, pssm: PSSM) -> tuple[np.ndarray, np.ndarray]:
    """Scores (n,) on the forward and the reverse strand of every window start, n = L - W + 1.

    ``ids``: (L,) token ids. ``forward[i]`` scores ``ids[i:i+W]``; ``reverse[i]`` scores its reverse
    complement (a minus-strand site at the same coordinates). Windows with a non-ACGT token are -inf.
    """
    W = pssm.length
    L = len(ids)
    n = L - W + 1
    if n <= 0:
        return np.zeros(0), np.zeros(0)
    fwd_t, rev_t = _extended_table(pssm.log_odds), _extended_table(pssm.reverse_complement())
    fwd, rev = np.empty(n), np.empty(n)
    step = current_policy().motif_scan_positions  # positions scored at a time
    for off in range(0, n, step):
        m = min(step, n - off)
        seg = np.asarray(ids[off:off + m + W - 1]).astype(np.intp)
        f = np.zeros(m)
        r = np.zeros(m)
        for j in range(W):
            col = seg[j:j + m]
            f += fwd_t[j][col]
            r += rev_t[j][col]
        fwd[off:off + m], rev[off:off + m] = f, r
    return fwd, rev


@dataclass
class ScanIndex:
    """All records' ids in one array, each followed by an N (no window spans two records):
    ``ids`` (total,) uint8, ``starts`` (R,) offset of each record, ``records`` their ids."""

    ids: np.ndarray
    starts: np.ndarray
    records: list[str]

    @classmethod
    def build(cls, records: Sequence[EncodedRecord]) -> "ScanIndex":
        lengths = np.array([len(r) for r in records], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
        ids = np.full(int((lengths + 1).sum()), NucleotideTokenizer.n_id, dtype=np.uint8)
        for st, r in zip(starts, records):
            ids[st:st + len(r)] = np.asarray(r.ids)
        return cls(ids, starts, [r.id for r in records])


def scan_records(records: Sequence[EncodedRecord], pssm: PSSM, threshold: Union[Threshold, str, float, None] = None,
                 both_strands: bool = True, index: Optional[ScanIndex] = None) -> list[Site]:
    """Every site with score >= the threshold, on both strands, ordered by record then position.

    ``index`` (:meth:`ScanIndex.build` of the same records) saves rebuilding it for each motif.
    """
    cut = Threshold.parse(threshold).score_for(pssm)
    if not math.isfinite(cut) or not len(records):
        return []
    index = index or ScanIndex.build(records)
    fwd, rev = score_sequence(index.ids, pssm)
    strands = [("+", fwd), ("-", rev)] if both_strands else [("+", fwd)]
    hits = []
    for strand, sc in strands:
        pos = np.flatnonzero(sc >= cut)
        ri = np.searchsorted(index.starts, pos, side="right") - 1
        hits.extend(zip(ri.tolist(), (pos - index.starts[ri]).tolist(), [strand] * len(pos), sc[pos].tolist()))
    hits.sort()
    return [Site(index.records[r], i, i + pssm.length, st, v, pssm.motif.id, r) for r, i, st, v in hits]


def non_overlapping(sites: Sequence[Site]) -> list[Site]:
    """Greedy by score: keep the best site, drop those overlapping a kept one (per record); position order."""
    kept: list[Site] = []
    by_record: dict[int, list[tuple[int, int]]] = {}
    for s in sorted(sites, key=lambda s: (-s.score, s.record_index, s.start, s.strand)):
        spans = by_record.setdefault(s.record_index, [])
        if any(a < s.end and s.start < b for a, b in spans):
            continue
        spans.append((s.start, s.end))
        kept.append(s)
    kept.sort(key=lambda s: (s.record_index, s.start, s.strand))
    return kept


def fraction_with_site(records: Sequence[EncodedRecord], sites: Sequence[Site]) -> float:
    """Share of the records that hold at least one site."""
    return len({s.record_index for s in sites}) / max(1, len(records))


def shuffle_records(records: Sequence[EncodedRecord], seed: int = 0) -> list[EncodedRecord]:
    """Each record's bases permuted at random (composition kept): a negative control for scanning."""
    rng = np.random.default_rng(seed)
    return [EncodedRecord(r.id, r.description, rng.permutation(np.asarray(r.ids))) for r in records]
