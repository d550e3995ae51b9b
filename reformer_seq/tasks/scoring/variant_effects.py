"""Zero-shot variant-effect scores from a language model: the windows and the batched engine.

A :class:`Job` is one allele on one strand: the strand's sequence (the contig, or its reverse
complement), the variant's 0-based start ``p`` on that strand and the REF and ALT token ids
(reverse-complemented for the reverse strand, with ``p`` mirrored to ``L - p - len(REF)``).
Everything below is written for one strand; the reverse strand is the same computation on the
reverse-complemented contig.

**Causal models** (:func:`causal_llr`). The window is ``[lo, hi)`` of ``W`` reference bases from
a fixed grid (starts at multiples of ``W/2``; the last one ends at the contig's end) chosen so the
variant starts in the window's middle half: at least ``W/4`` bases of context on either side away
from the contig's ends (:func:`variant_window`). The REF window is the reference there; the ALT
window is ``ref[lo:p] + ALT + ref[p + len(REF):hi]``, so both alleles are followed by the same
downstream reference bases. The score is::

    llr = sum_{t >= p} log2 P_alt(x_t | x_<t) - sum_{t >= p} log2 P_ref(x_t | x_<t)

over the A/C/G/T of each window from the variant to its end: the exact difference of the two
windows' log-likelihoods, because the bases before ``p`` and their predictions are identical
(the model is strictly causal, and its LSH bucket count only changes when the window length
does by a large factor). Every variant in one grid window shares its REF pass: a window costs
one forward pass for the reference plus one per allele, batched.

**Masked models** (:func:`masked_llr`, SNVs only). A window of ``W`` bases centred on the
variant with the variant masked: ``llr = log2 p(ALT) - log2 p(REF)`` at the masked position,
i.e. ``(logit[ALT] - logit[REF]) / ln 2`` (GPN's score, in bits). Alleles at one position share
the pass.

**Markov baseline** (:func:`markov_llr`): the causal score with an order-k Markov chain on the
same windows; only the bases up to ``k`` past the allele can differ, so only those are scored.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ..evaluation.likelihood import LN2, Query, ScoringModel, is_base, run_queries, span_window
from ..evaluation.markov import MarkovModel
from ...genome.tokenizers import MASK_ID


@dataclass
class Job:
    """One allele on one strand; ``llr`` (bits) is filled in by the engine."""

    key: int  # the caller's allele index
    strand: int  # 0 forward, 1 reverse
    chrom: int  # contig index
    p: int  # 0-based start on this strand
    ref: np.ndarray  # token ids on this strand
    alt: np.ndarray
    llr: float = float("nan")


def variant_window(length: int, p: int, window: int) -> tuple[int, int]:
    """``[lo, hi)`` of the grid window (starts at multiples of ``window // 2``) whose middle half holds ``p``."""
    if length <= window:
        return 0, length
    step = max(1, window // 2)
    k = max(0, (p - window // 4) // step)
    lo = min(k * step, length - window)
    return lo, lo + window


def alt_window(seq: np.ndarray, lo: int, hi: int, job: Job) -> np.ndarray:
    """``seq[lo:p] + ALT + seq[p + len(REF):hi]`` as int64 tokens."""
    p, r = job.p, len(job.ref)
    return np.concatenate([seq[lo:p], job.alt, seq[p + r:hi]]).astype(np.int64)


def _scored(tokens: np.ndarray, start: int, stop: Optional[int] = None) -> np.ndarray:
    """Positions ``>= start`` (at least 1: the first token has no prediction) holding A/C/G/T."""
    start = max(start, 1)
    stop = len(tokens) if stop is None else min(stop, len(tokens))
    return np.flatnonzero(is_base(tokens[start:stop])) + start if stop > start else np.zeros(0, np.int64)


def _tail_sums(positions: np.ndarray, logp: np.ndarray) -> Callable[[int], float]:
    """``f(q)`` = sum of ``logp`` over ``positions >= q`` (positions sorted)."""
    tail = np.concatenate([np.cumsum(logp[::-1])[::-1], [0.0]])
    return lambda q: float(tail[np.searchsorted(positions, max(q, 1))])


def _groups(jobs: Sequence[Job], key: Callable[[Job], tuple]) -> list[tuple[tuple, list[Job]]]:
    g: dict[tuple, list[Job]] = defaultdict(list)
    for j in jobs:
        g[key(j)].append(j)
    return list(g.items())


def _forward_order(seqs: Sequence[Sequence[np.ndarray]]) -> Callable[[tuple], tuple]:
    """Sort key of a ``(chrom, strand, lo, ...)`` group by its forward-strand position: both
    strands of one place are scored close together (so the progress bar advances steadily)."""
    def key(k: tuple) -> tuple:
        chrom, strand, lo = k[0], k[1], k[2]
        return chrom, (len(seqs[chrom][0]) - lo if strand else lo), strand
    return key


def causal_llr(jobs: Sequence[Job], seqs: Sequence[Sequence[np.ndarray]], scorer: ScoringModel, window: int,
               batch_size: int = 8, done: Optional[Callable[[Job], None]] = None) -> None:
    """Fill ``job.llr`` of causal jobs; ``seqs[chrom][strand]`` is the strand's token ids (L,)."""
    groups = _groups(jobs, lambda j: (j.chrom, j.strand) + variant_window(len(seqs[j.chrom][j.strand]), j.p, window))
    groups.sort(key=lambda g: _forward_order(seqs)(g[0]))

    def queries() -> Iterator[Query]:
        for (c, s, lo, hi), js in groups:
            seq = seqs[c][s]
            ref = np.asarray(seq[lo:hi]).astype(np.int64)
            pos = _scored(ref, min(j.p for j in js) - lo)
            yield Query(ref, pos, ref[pos][None])
            for j in js:
                alt = alt_window(seq, lo, hi, j)
                pos = _scored(alt, j.p - lo)
                yield Query(alt, pos, alt[pos][None])

    results = run_queries(scorer, queries(), batch_size, progress=False)
    for (c, s, lo, hi), js in groups:
        ref = np.asarray(seqs[c][s][lo:hi])
        ref_logp, _ = next(results)
        ref_sum = _tail_sums(_scored(ref, min(j.p for j in js) - lo), ref_logp[0])
        for j in js:
            alt_logp, _ = next(results)
            j.llr = (float(alt_logp.sum()) - ref_sum(j.p - lo)) / LN2
            if done:
                done(j)


def masked_llr(jobs: Sequence[Job], seqs: Sequence[Sequence[np.ndarray]], scorer: ScoringModel, window: int,
               batch_size: int = 8, done: Optional[Callable[[Job], None]] = None) -> None:
    """Fill ``job.llr`` of SNV jobs with a masked model: log2 p(ALT) - log2 p(REF) at the masked position."""
    groups = _groups(jobs, lambda j: (j.chrom, j.strand, j.p))
    groups.sort(key=lambda g: _forward_order(seqs)(g[0]))

    def queries() -> Iterator[Query]:
        for (c, s, p), js in groups:
            seq = seqs[c][s]
            lo, hi = span_window(len(seq), p, p + 1, window, causal=False)
            tokens = np.asarray(seq[lo:hi]).astype(np.int64)
            tokens[p - lo] = MASK_ID
            targets = np.array([[int(js[0].ref[0])]] + [[int(j.alt[0])] for j in js], np.int64)  # (1 + n, 1)
            yield Query(tokens, np.array([p - lo]), targets)

    results = run_queries(scorer, queries(), batch_size, progress=False)
    for _, js in groups:
        logp, _ = next(results)  # (1 + n, 1)
        for i, j in enumerate(js):
            j.llr = float(logp[i + 1, 0] - logp[0, 0]) / LN2
            if done:
                done(j)


def markov_llr(job: Job, seq: np.ndarray, model: MarkovModel, window: int) -> float:
    """The causal score of ``job`` (bits) under an order-k Markov chain, on the causal windows."""
    lo, hi = variant_window(len(seq), job.p, window)
    ref = np.asarray(seq[lo:hi]).astype(np.int64)
    alt = alt_window(seq, lo, hi, job)
    q, k = job.p - lo, model.order
    total = 0.0
    for tokens, n, sign in ((alt, len(job.alt), 1.0), (ref, len(job.ref), -1.0)):
        pos = _scored(tokens, q, q + n + k + 1)  # later bases have the same context in both windows
        if pos.size:
            total += sign * float(model.score(tokens, pos)[0].sum())
    return total
