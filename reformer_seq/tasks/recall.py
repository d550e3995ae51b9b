"""Long-range recall: does a model use a repeat's earlier copy? Constructions, finders, baselines.

* :func:`recall_pair` builds the copy test of the long-context study: ``P + S + F(d) + S'``
  against the control ``P + C + F(d) + S'``, where ``S`` and ``C`` are unrelated m-base segments
  of a real genome, ``P`` a prefix, ``F(d)`` d filler bases from elsewhere, and ``S'`` is ``S``
  (direct copy) or its reverse complement (inverted repeat), optionally diverged
  (:func:`diverge`: substitutions at an exact rate, short indels) and the same diverged ``S'`` in
  the control. Scoring the final ``S'`` in both, **recall gain = control bits - repeat bits**.
  The bases before ``S'`` differ only in ``S`` against ``C``, so any fixed-order Markov model
  (order < d) gains exactly 0.
* :func:`repeat_positions` marks positions whose preceding ``w`` bases occurred earlier in the
  same window, exactly or with up to ``max_mismatches`` substitutions (pigeonhole on
  ``max_mismatches + 1`` blocks, then a check of every candidate pair).
* :class:`CopyModel` is the classic DNA-compressor repeat model: predict the base that followed
  the most recent earlier occurrence of the longest matching suffix (lengths ``orders``), mixed
  with a Markov model: ``p(x) = w_k [x = predicted] + (1 - w_k) p_markov(x)``, one weight per
  suffix length, fitted on training sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .evaluation.likelihood import is_base
from .evaluation.markov import MarkovModel
from ..genome.tokenizers import A_ID, NucleotideTokenizer

_TOKENIZER = NucleotideTokenizer()


def reverse_complement(ids: np.ndarray) -> np.ndarray:
    """Reverse complement of nucleotide token ids (L,), as int64 (the tokenizer's, widened)."""
    return _TOKENIZER.reverse_complement(np.asarray(ids)).astype(np.int64)


# ---------------------------------------------------------------------- the copy test
@dataclass
class RecallPair:
    """One copy test: two inputs of equal length whose final ``m`` bases are scored."""

    repeat: np.ndarray  # P + S + F + S'  (L,) int64 token ids
    control: np.ndarray  # P + C + F + S'
    m: int  # the scored segment S' is the last m bases of both
    distance: int  # d: filler bases between the first copy and S'
    reverse: bool  # S' = revcomp(S)
    divergence: float = 0.0  # share of S' substituted (before any indels)
    indels: int = 0  # short insertions/deletions in S'


def diverge(seg: np.ndarray, rng: np.random.Generator, substitutions: float = 0.0, indel_rate: float = 0.0,
            max_indel: int = 3) -> tuple[np.ndarray, int]:
    """A diverged copy of ``seg`` (m,) token ids: ``round(substitutions * m)`` distinct positions
    changed each to one of the *other* three bases (so the copy differs from ``seg`` at exactly the
    stated rate), then ``round(indel_rate * m)`` indels of 1..``max_indel`` bases, each an insertion
    of random bases or a deletion with equal chance. Returns the copy and the number of indels."""
    seg = np.asarray(seg, dtype=np.int64)
    m = len(seg)
    if not (0.0 <= substitutions <= 1.0 and 0.0 <= indel_rate <= 1.0):
        raise ValueError(f"substitution and indel rates must be in [0, 1], got {substitutions}, {indel_rate}")
    out = seg.copy()
    hit = rng.choice(m, int(round(substitutions * m)), replace=False)
    out[hit] = A_ID + (out[hit] - A_ID + rng.integers(1, 4, len(hit))) % 4  # a different base
    n_indel = int(round(indel_rate * m))
    for _ in range(n_indel):
        at, n = int(rng.integers(0, len(out) + 1)), int(rng.integers(1, max_indel + 1))
        if rng.random() < 0.5:
            out = np.concatenate([out[:at], rng.integers(A_ID, A_ID + 4, n), out[at:]])
        else:
            out = np.concatenate([out[:at], out[at + n:]])
    return out, n_indel


def shares_kmer(a: np.ndarray, b: np.ndarray, k: int = 20) -> bool:
    """Whether some k-mer of ``b`` (A/C/G/T only) occurs in ``a`` or in its reverse complement."""
    ca, oka = _pack(np.asarray(a), k)
    cr, okr = _pack(reverse_complement(a), k)
    cb, okb = _pack(np.asarray(b), k)
    return bool(np.isin(cb[okb], np.concatenate([ca[oka], cr[okr]])).any())


def _clean_starts(ids: np.ndarray, length: int, rng: np.random.Generator, n: int) -> list[int]:
    """``n`` random starts of ``length``-base stretches of ``ids`` that hold only A/C/G/T, non-overlapping."""
    if n * length > len(ids):
        raise ValueError(f"could not find {n} clean, disjoint {length:,}-base stretches in {len(ids):,} bases "
                         f"(they need {n * length:,}); use a shorter distance or a filler from elsewhere")
    base = is_base(ids)
    bad = np.concatenate([[0], np.cumsum(~base)])
    out: list[int] = []
    for _ in range(200 * n):
        if len(out) == n:
            break
        s = int(rng.integers(0, len(ids) - length + 1))
        if bad[s + length] - bad[s] == 0 and all(s + length <= o or o + length <= s for o in out):
            out.append(s)
    if len(out) < n:
        raise ValueError(f"could not find {n} clean, disjoint {length}-base stretches in {len(ids):,} bases")
    return out


CONTROL_MATCH_K = 20  # the control may share no k-mer this long (either strand) with S'


def recall_pair(ids: np.ndarray, m: int, distance: int, rng: np.random.Generator, prefix: int = 1024,
                reverse: bool = False, divergence: float = 0.0, indel_rate: float = 0.0,
                tries: int = 20, filler: Optional[np.ndarray] = None) -> RecallPair:
    """Draw S, C, P and F from disjoint places of ``ids`` (a held-out genome region) and build the pair.
    With ``filler`` (e.g. the training split, for distances the held-out region cannot supply four
    times over), F comes from there instead; it is never scored, only S' is.

    ``S'`` is S (or its reverse complement) diverged by :func:`diverge`; both inputs end with the
    same ``S'``. Draws whose control ``P + C + F`` shares a ``CONTROL_MATCH_K``-mer with ``S'`` (a
    genomic repeat by chance) are redrawn, so the control holds no earlier copy to recall."""
    ids = np.asarray(ids, dtype=np.int64)
    for _ in range(tries):
        if filler is None:
            s_at, c_at, p_at, f_at = _clean_starts(ids, max(m, prefix, distance, 1), rng, 4)
            F = ids[f_at:f_at + distance]
        else:
            s_at, c_at, p_at = _clean_starts(ids, max(m, prefix, 1), rng, 3)
            f_at, = _clean_starts(filler, max(distance, 1), rng, 1)
            F = filler[f_at:f_at + distance]
        S, C = ids[s_at:s_at + m], ids[c_at:c_at + m]
        P = ids[p_at:p_at + prefix]
        last, n_indel = diverge(reverse_complement(S) if reverse else S, rng, divergence, indel_rate)
        control = np.concatenate([P, C, F, last])
        if not shares_kmer(control[:-len(last)], last, CONTROL_MATCH_K):
            return RecallPair(np.concatenate([P, S, F, last]), control, len(last), distance, reverse,
                              divergence, n_indel)
    raise ValueError(f"every one of {tries} draws put a {CONTROL_MATCH_K}-mer of the second copy in the control; "
                     f"the region is too repetitive for the copy test (use another held-out region)")


# ---------------------------------------------------------------------- real repeats
def _pack(ids: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """2-bit codes of the w-mer starting at each position (n = L - w + 1,) and whether it is all A/C/G/T."""
    b = np.where(is_base(ids), np.asarray(ids, dtype=np.int64) - A_ID, 0)
    n = len(ids) - w + 1
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    code = np.zeros(n, np.int64)
    for i in range(w):
        code = (code << 2) | b[i:i + n]
    bad = np.concatenate([[0], np.cumsum(~is_base(ids))])
    return code, (bad[w:w + n] - bad[:n]) == 0


def _mismatches(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Substitutions between packed w-mers (2 bits a base)."""
    x = np.bitwise_xor(a, b)
    return np.bitwise_count((x | (x >> 1)) & 0x5555555555555555)


def repeat_positions(ids: np.ndarray, w: int = 24, max_mismatches: int = 0, max_group: int = 4096) -> np.ndarray:
    """(L,) bool: position ``t`` is marked when the ``w`` bases before it, ``ids[t-w:t]``, occurred
    earlier in ``ids`` (starting before ``t - w``) with at most ``max_mismatches`` substitutions.

    With mismatches, candidates come from the pigeonhole principle: two w-mers with at most k
    substitutions share at least one of ``k + 1`` blocks exactly, at the same offset. A block
    value seen more than ``max_group`` times (low-complexity runs) is checked against its most
    recent ``max_group`` occurrences only. ``w <= 32``.
    """
    ids = np.asarray(ids)
    L = len(ids)
    marked = np.zeros(L, dtype=bool)
    if not 0 < w <= 32 or L <= w:
        return marked
    code, ok = _pack(ids, w)  # w-mer starting at s; it precedes position s + w
    n = len(code)
    later_hit = np.zeros(n, dtype=bool)
    nblocks = max_mismatches + 1
    edges = np.linspace(0, w, nblocks + 1).astype(int)
    for a, b in zip(edges[:-1], edges[1:]):
        key = (code >> (2 * (w - b))) & ((1 << (2 * (b - a))) - 1)  # block [a, b) of each w-mer
        key = np.where(ok, key, -1)
        order = np.lexsort((np.arange(n), key))  # by block value, then start
        k_sorted = key[order]
        group_start = np.concatenate([[True], k_sorted[1:] != k_sorted[:-1]])
        gid = np.cumsum(group_start) - 1
        first = np.flatnonzero(group_start)
        rank = np.arange(n) - first[gid]  # index within its group
        for lag in range(1, max_group + 1):  # pair each w-mer with the one lag places earlier in its group
            sel = np.flatnonzero((rank >= lag) & (k_sorted >= 0))
            if not sel.size:
                break
            later, earlier = order[sel], order[sel - lag]
            if max_mismatches == 0:
                hit = code[later] == code[earlier]
            else:
                hit = _mismatches(code[later], code[earlier]) <= max_mismatches
            later_hit[later[hit]] = True
            if max_mismatches == 0:
                break  # exact: the previous occurrence in the group is an exact copy or none is
    marked[w:w + n] = later_hit[:L - w]
    return marked


def repeat_positions_brute(ids: np.ndarray, w: int = 24, max_mismatches: int = 0) -> np.ndarray:
    """Reference for :func:`repeat_positions` by comparing every pair of w-mers (O(L^2); for tests)."""
    ids = np.asarray(ids)
    L = len(ids)
    marked = np.zeros(L, dtype=bool)
    base = is_base(ids)
    for t in range(w, L):
        q = ids[t - w:t]
        if not base[t - w:t].all():
            continue
        for s in range(0, t - w):
            if base[s:s + w].all() and int((ids[s:s + w] != q).sum()) <= max_mismatches:
                marked[t] = True
                break
    return marked


# ---------------------------------------------------------------------- the copy-model baseline
def _most_recent_before(db_key: np.ndarray, q_key: np.ndarray) -> np.ndarray:
    """For each query i (key ``q_key[i]`` at position i), the largest db position j < i with
    ``db_key[j] == q_key[i]``, or -1. Negative keys never match."""
    n = len(q_key)
    keys = np.concatenate([db_key, q_key])
    pos = np.concatenate([np.arange(len(db_key)), np.arange(n)])
    is_db = np.concatenate([np.ones(len(db_key), np.int64), np.zeros(n, np.int64)])
    order = np.lexsort((is_db, pos, keys))  # by key, then position; a query before a db entry at its position
    k_s, p_s, db_s = keys[order], pos[order], is_db[order]
    idx = np.arange(len(order))
    group_start = np.maximum.accumulate(np.where(np.concatenate([[True], k_s[1:] != k_s[:-1]]), idx, 0))
    last_db = np.maximum.accumulate(np.where(db_s == 1, idx, -1))  # latest db entry at or before idx
    qsel = np.flatnonzero(db_s == 0)
    j = last_db[qsel]
    ok = (j >= group_start[qsel]) & (k_s[qsel] >= 0)
    found = np.full(n, -1, np.int64)
    found[p_s[qsel]] = np.where(ok, p_s[np.maximum(j, 0)], -1)
    return found


def copy_sources(ids: np.ndarray, k: int, reverse: bool = False) -> np.ndarray:
    """(L,) int64: for each position t, the index of the base the copy model predicts ``ids[t]``
    from (the most recent earlier occurrence of the suffix ``ids[t-k:t]``), or -1 where there is none.

    Direct: an earlier occurrence of the same k-mer (ending before ``t - 1``); the source is the
    base that followed it. ``reverse``: an earlier occurrence of its reverse complement (ending
    before ``t - 1``); the source is the base before it, predicted as its complement.
    """
    ids = np.asarray(ids, dtype=np.int64)
    L = len(ids)
    src = np.full(L, -1, dtype=np.int64)
    code, ok = _pack(ids, k)  # k-mer starting at s precedes position s + k
    if len(code) < 2:
        return src
    q_key = np.where(ok, code, -1)
    if not reverse:
        prev = _most_recent_before(q_key, q_key)  # earlier start with the same k-mer
        follow = prev + k  # the base after it (< t = q + k, so known)
    else:
        rc_code, _ = _pack(reverse_complement(ids), k)  # rc of the k-mer starting at s is rc_code[L - k - s]
        db = np.where(ok, rc_code[::-1], -1)  # db[s] = code of revcomp(ids[s:s+k])
        db[0] = -1  # no base before the first k-mer
        prev = _most_recent_before(db, q_key)
        follow = prev - 1  # the base before the earlier occurrence; predicted as its complement
    q = np.flatnonzero(prev >= 0)
    q = q[q + k < L]
    f = follow[q]
    valid = is_base(ids[f])
    src[q[valid] + k] = f[valid]
    return src


def copy_predictions(ids: np.ndarray, k: int, reverse: bool = False) -> np.ndarray:
    """(L,) int64: for each position t, the copy model's prediction of ``ids[t]`` from
    :func:`copy_sources` (the complement of the source base for ``reverse``), or -1 where there is none."""
    ids = np.asarray(ids, dtype=np.int64)
    src = copy_sources(ids, k, reverse)
    pred = np.full(len(ids), -1, dtype=np.int64)
    at = np.flatnonzero(src >= 0)
    base = ids[src[at]]
    pred[at] = reverse_complement(base[::-1]) if reverse else base  # complement, in order
    return pred


@dataclass
class CopyModel:
    """Longest-suffix copy model mixed with a Markov model (see the module docstring)."""

    markov: MarkovModel
    orders: tuple[int, ...] = (32, 24, 20, 16, 12)
    reverse: bool = True  # also copy from reverse-complement (inverted) occurrences
    # predictor -> mixing weight; predictor k > 0: direct match of length k, -k: reverse complement
    weights: dict[int, float] = field(default_factory=dict)

    def predictions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per position: the predicted base (-1: none) and the predictor that made it (0: none;
        k: direct suffix match of length k; -k: reverse-complement match). Longest first; at
        equal length the direct match wins."""
        L = len(ids)
        pred = np.full(L, -1, np.int64)
        used = np.zeros(L, np.int64)
        for k in sorted(self.orders, reverse=True):
            for rev in ((False, True) if self.reverse else (False,)):
                p = copy_predictions(ids, k, rev)
                new = (pred < 0) & (p >= 0)
                pred[new], used[new] = p[new], -k if rev else k
        return pred, used

    def predictors(self) -> list[int]:
        return [s * k for k in self.orders for s in ((1, -1) if self.reverse else (1,))]

    def fit(self, windows: Sequence[np.ndarray], grid: int = 200) -> CopyModel:
        """Choose each w_k to maximise the likelihood of the training ``windows``."""
        hits: dict[int, list] = {k: [] for k in self.predictors()}
        for ids in windows:
            pos = np.flatnonzero(is_base(ids))
            pos = pos[pos > 0]
            pred, used = self.predictions(ids)
            lp, _ = self.markov.score(ids, pos)
            for k in self.predictors():
                sel = used[pos] == k
                hits[k].append((pred[pos[sel]] == ids[pos[sel]], 2.0 ** lp[sel]))
        ws = np.linspace(0.0, 0.999, grid)
        for k in self.predictors():
            if not hits[k]:
                self.weights[k] = 0.0
                continue
            right = np.concatenate([h[0] for h in hits[k]])
            pm = np.concatenate([h[1] for h in hits[k]])
            if not right.size:
                self.weights[k] = 0.0
                continue
            ll = [np.log(w * right + (1 - w) * pm).sum() for w in ws]
            self.weights[k] = float(ws[int(np.argmax(ll))])
        return self

    def bits(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """-log2 p of the bases at ``positions`` (A/C/G/T tokens) given everything before them."""
        positions = np.asarray(positions, dtype=np.int64)
        pred, used = self.predictions(ids)
        lp, _ = self.markov.score(ids, positions)
        pm = 2.0 ** lp
        w = np.array([self.weights.get(int(k), 0.0) for k in used[positions]])
        p = w * (pred[positions] == np.asarray(ids)[positions]) + (1 - w) * pm
        return -np.log2(p)


def markov_for_copy(train_windows: Sequence[np.ndarray], order: int) -> MarkovModel:
    """The Markov model a :class:`CopyModel` mixes with, fitted on ``train_windows``."""
    from .evaluation.markov import Segment

    return MarkovModel.fit([Segment(np.asarray(w)) for w in train_windows], order)


def causal_bits(scorer, ids: np.ndarray, positions: Optional[np.ndarray] = None) -> np.ndarray:
    """-log2 p of ``ids[t]`` given ``ids[:t]`` under a causal
    :class:`~reformer_seq.tasks.evaluation.likelihood.ScoringModel`, for ``positions`` (default: every t >= 1),
    from one pass over ``ids``."""
    ids = np.asarray(ids, dtype=np.int64)
    positions = np.arange(1, len(ids)) if positions is None else np.asarray(positions, dtype=np.int64)
    logp = scorer(ids[None])[0]  # (L, V): row t predicts ids[t + 1]
    return -logp[positions - 1, ids[positions]] / np.log(2)
