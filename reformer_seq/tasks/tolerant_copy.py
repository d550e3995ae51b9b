"""A substitution-tolerant copy model: the classic baseline for diverged repeats.

DNA compressors follow a repeat through its mismatches: GeCo's substitution-tolerant context
models (Pratas, Silva, Hosseini and Pinho, "GeCo2", Bioinformatics 2020; STCM in GeCo, 2016)
keep the alignment an exact match found and move it one base forward after every base, right
or wrong, and drop it only when too many of the recent predictions missed. Here:

* **anchor**: where no alignment is held, the most recent earlier exact ``k``-mer match of the
  suffix (direct, else reverse complement; :func:`~reformer_seq.tasks.recall.copy_sources`);
* **follow**: the source moves +1 a base (direct) or -1 (reverse complement, predicting the
  complement), whatever the base turned out to be;
* **drop**: when more than ``max_misses`` of the last ``window`` predictions missed; after a
  miss a fresh exact anchor, if there is one, takes over;
* **mix**: ``p(x) = w_h [x = predicted] + (1 - w_h) p_markov(x)``, one weight per hit count
  ``h`` of the last ``window`` predictions, fitted on training sequence.

The exact-match :class:`~reformer_seq.tasks.recall.CopyModel` stops predicting for ``k`` bases
after each substitution; this one loses one base.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .evaluation.markov import MarkovModel
from .recall import A_ID, copy_sources


@dataclass
class TolerantCopyModel:
    """Follows an alignment through substitutions (see the module docstring)."""

    markov: MarkovModel
    k: int = 12  # anchor: an exact match of the last k bases
    window: int = 16  # the hit count over this many recent predictions sets the weight
    max_misses: int = 8  # drop the alignment when more of the last `window` predictions missed
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (window + 1,) by hit count

    def walk(self, ids: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Predicted base (-1: none) and the hit count behind it for positions ``lo..hi-1``,
        following alignments from ``lo`` on (none held before ``lo``)."""
        ids = np.asarray(ids, dtype=np.int64)
        src = {rev: copy_sources(ids, self.k, rev) for rev in (False, True)}
        pred = np.full(hi - lo, -1, np.int64)
        hits = np.zeros(hi - lo, np.int64)
        ptr, step = -1, 0
        hist: list[bool] = []
        for t in range(lo, hi):
            misses = len(hist) - sum(hist)
            if ptr < 0 or ptr >= t or misses > self.max_misses or (hist and not hist[-1]):
                for rev in (False, True):  # a fresh exact anchor replaces a failing alignment
                    if src[rev][t] >= 0:
                        ptr, step, hist = int(src[rev][t]), -1 if rev else 1, [True] * min(self.k, self.window)
                        break
                else:
                    if misses > self.max_misses:
                        ptr = -1
            if 0 <= ptr < t and A_ID <= ids[ptr] < A_ID + 4:
                base = ids[ptr] if step > 0 else 2 * A_ID + 3 - ids[ptr]  # complement: A<->T, C<->G
                pred[t - lo], hits[t - lo] = base, sum(hist)
                hist = (hist + [bool(base == ids[t])])[-self.window:]
            elif ptr >= 0:
                hist = (hist + [False])[-self.window:]
            if ptr >= 0:
                ptr += step
        return pred, hits

    def fit(self, seqs: Sequence[tuple[np.ndarray, int, int]], grid: int = 200) -> TolerantCopyModel:
        """Each hit count's weight maximising the likelihood of ``(ids, lo, hi)`` training stretches."""
        right: list[list] = [[] for _ in range(self.window + 1)]
        pm: list[list] = [[] for _ in range(self.window + 1)]
        for ids, lo, hi in seqs:
            pred, hits = self.walk(ids, lo, hi)
            pos = np.arange(lo, hi)
            lp, _ = self.markov.score(ids, pos)
            for h in range(self.window + 1):
                sel = (pred >= 0) & (hits == h)
                right[h].append(pred[sel] == np.asarray(ids)[pos[sel]])
                pm[h].append(2.0 ** lp[sel])
        ws = np.linspace(0.0, 0.999, grid)
        self.weights = np.zeros(self.window + 1)
        for h in range(self.window + 1):
            r, p = np.concatenate(right[h]), np.concatenate(pm[h])
            if r.size:
                self.weights[h] = ws[int(np.argmax([np.log(w * r + (1 - w) * p).sum() for w in ws]))]
        return self

    def bits(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """-log2 p of the bases at ``positions`` (a contiguous run of A/C/G/T tokens)."""
        positions = np.asarray(positions, dtype=np.int64)
        lo, hi = int(positions[0]), int(positions[-1]) + 1
        if not np.array_equal(positions, np.arange(lo, hi)):
            raise ValueError("TolerantCopyModel.bits scores a contiguous run of positions")
        pred, hits = self.walk(ids, lo, hi)
        lp, _ = self.markov.score(ids, positions)
        w = np.where(pred >= 0, self.weights[hits], 0.0)
        p = w * (pred == np.asarray(ids)[positions]) + (1 - w) * 2.0 ** lp
        return -np.log2(p)
