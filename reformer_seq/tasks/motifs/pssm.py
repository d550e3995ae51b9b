"""Position-specific scoring matrices: the background from the scanned sequences, log2-odds PSSMs
and the thresholds that decide when a score is a site (p-value, relative, or bits)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from ...errors import InputError
from ...runtime.policy import current_policy
from ...genome.encoded import EncodedRecord
from ...genome.tokenizers import A_ID, N_BASES

from .files import Background, DEFAULT_PSEUDOCOUNT, DEFAULT_THRESHOLD, SCORE_GRID, Motif, as_background


# ---------------------------------------------------------------------- background and PSSMs
def base_counts(records: Sequence[Union[EncodedRecord, np.ndarray]]) -> np.ndarray:
    """Counts of A, C, G, T (4,) int64 over the records' token ids."""
    total = np.zeros(4, dtype=np.int64)
    for rec in records:
        ids = rec.ids if isinstance(rec, EncodedRecord) else rec
        step = current_policy().motif_scan_positions
        for off in range(0, len(ids), step):
            total += np.bincount(np.asarray(ids[off:off + step]), minlength=256)[A_ID:A_ID + N_BASES]
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


def make_pssm(motif: Motif, background: Background = (0.25, 0.25, 0.25, 0.25),
              pseudocount: float = DEFAULT_PSEUDOCOUNT) -> PSSM:
    """The motif's PSSM (log2-odds, bits) against ``background`` with ``pseudocount`` (see module docstring)."""
    b = as_background(background)
    p = motif.probabilities(b, pseudocount)
    return PSSM(motif, np.log2(p / b), b, pseudocount)


@dataclass(frozen=True)
class Threshold:
    """When a score is a site: ``kind`` is ``pvalue``, ``relative`` or ``score`` (see module docstring)."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: Union[str, float, Threshold, None]) -> Threshold:
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


