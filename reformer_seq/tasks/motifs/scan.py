"""Scanning genomes with a PSSM on both strands (numpy, in chunks), sites, and shuffled controls."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from ...runtime.policy import current_policy
from ...genome.encoded import EncodedRecord
from ...genome.tokenizers import A_ID, N_BASES, NucleotideTokenizer

from .pssm import PSSM, Threshold


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
    t[:, A_ID:A_ID + N_BASES] = log_odds
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
    def build(cls, records: Sequence[EncodedRecord]) -> ScanIndex:
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
    hits: list[tuple[int, int, str, float]] = []  # (record, start, strand, score)
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
