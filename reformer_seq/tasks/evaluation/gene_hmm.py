"""A classical gene-finding hidden Markov model as a next-base predictor (issue 27): the model.

The textbook prokaryotic gene HMM (Krogh, Mian & Haussler 1994, "A hidden Markov model that
finds genes in E. coli DNA", NAR 22:4768; with the higher-order codon-position emissions of
GeneMark.hmm, Lukashin & Borodovsky 1998, NAR 26:1107) with order-k emissions, run as a causal language model: the
forward algorithm gives, at every position t,
``P(x_{t+1} | x_0..x_t)`` with frame and strand summed over, never given.

**States** (19; all read along the forward strand, left to right)::

    0       N                  non-coding
    1-3     F1 F2 F3           forward-strand gene, codon positions 1, 2, 3
    4-6     Ra Rb Rc           reverse-strand gene, the 1st/2nd/3rd base of a codon in forward
                               order (= codon positions 3, 2, 1 of the gene's own strand)
    7-9     start codon (forward gene)        10-12  stop codon (forward gene)
    13-15   stop codon of a reverse gene      16-18  start codon of a reverse gene
            (TTA/CTA/TCA read forwards)              (CAT/CAC/CAA: ATG/GTG/TTG read forwards)

Transitions: ``N -> N``, ``N -> start1 -> start2 -> start3 -> F1 -> F2 -> F3 -> F1 ...``,
``F3 -> stop1 -> stop2 -> stop3 -> N``; a reverse gene is the mirror: ``N -> rstop1..3 -> Ra ->
Rb -> Rc -> Ra ...``, ``Rc -> rstart1..3 -> N``. The only free transition probabilities are
fitted from the training annotation: leaving N (1 / mean intergenic length, split by the share of
forward genes) and ending a gene (1 / mean number of inner codons, per strand). The initial
distribution is the chain's stationary one. ``codon_states=False`` drops the 12 start/stop
states (7 states: ``N -> F1``, ``F3 -> N``, ``N -> Ra``, ``Rc -> N``; in training a start codon is
then the gene's first coding codon and a stop codon is labelled N).

**Emissions**: per state an order-k table ``P(x_t | x_{t-k}..x_{t-1})`` with add-``pseudocount``
smoothing, backed off to the longest order the left context allows (record start, after an N),
as the Markov baseline does. Start/stop states emit from their codon's own distribution
(conditioned only on the codon's earlier bases). In-frame stops are forbidden: in F3 the base
completing TAA/TAG/TGA after the two previous bases has probability 0, and in Rc (a reverse-strand
codon's last base in forward order, its codon position 1) the base completing TTA/CTA/TCA (the
reverse complements of TAA/TAG/TGA) has probability 0; each row is renormalised.

**Inference** (:func:`predictive_logp`): the scaled forward algorithm over a batch of windows
(B, L) at once, a Python loop over positions and arrays of shape (B, S). A non-ACGT token (N,
PAD) is marginalised (emission 1 in every state) and is never a target. E. coli K-12, fitted on
the first 90% and scored on the last 10%: 1.894 bits per base at order 2 and 1.861 at order 5
(best Markov chain 1.934); fitting takes about a second, scoring 464 kb a third of one
(benchmarks/gene_baselines.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...errors import ConfigError
from ...genome.tokenizers import A_ID, N_BASES

A, C, G, T = range(4)
N, F1, F2, F3, RA, RB, RC = range(7)
FSTART, FSTOP, RSTOP, RSTART = 7, 10, 13, 16  # first state of each codon block
STOPS = ((T, A, A), (T, A, G), (T, G, A))
FORBIDDEN = {F3: [(a, b, c) for a, b, c in STOPS],  # (x_{t-2}, x_{t-1}, x_t) never emitted in this state
             RC: [(3 - c, 3 - b, 3 - a) for a, b, c in STOPS]}  # reverse complements: TTA, CTA, TCA
MIN_ORDER, MAX_ORDER = 2, 8


def n_states(codon_states: bool = True) -> int:
    return 19 if codon_states else 7


def codon_position(state: int) -> int:
    """0, 1, 2 for the bases of a start/stop codon state block; -1 for N and inner coding states."""
    return (state - FSTART) % 3 if state >= FSTART else -1


@dataclass(frozen=True)
class GeneRates:
    """The fitted transition rates: leaving N, forward share of genes, ending a gene per strand."""

    p_gene: float  # P(N -> a gene start) per base
    forward_share: float
    p_end_forward: float  # P(F3 -> end) per codon
    p_end_reverse: float


def transition_matrix(rates: GeneRates, codon_states: bool = True) -> np.ndarray:
    """(S, S) row-stochastic transitions of the topology in the module docstring."""
    S = n_states(codon_states)
    M = np.zeros((S, S))
    pg, ff = rates.p_gene, rates.forward_share
    fwd_in, fwd_out = (FSTART, FSTOP) if codon_states else (F1, N)
    rev_in, rev_out = (RSTOP, RSTART) if codon_states else (RA, N)
    M[N, N] = 1 - pg
    M[N, fwd_in] += pg * ff
    M[N, rev_in] += pg * (1 - ff)
    M[F1, F2] = M[F2, F3] = M[RA, RB] = M[RB, RC] = 1.0
    M[F3, F1], M[F3, fwd_out] = 1 - rates.p_end_forward, rates.p_end_forward
    M[RC, RA], M[RC, rev_out] = 1 - rates.p_end_reverse, rates.p_end_reverse
    if codon_states:
        for first, after in ((FSTART, F1), (FSTOP, N), (RSTOP, RA), (RSTART, N)):
            M[first, first + 1] = M[first + 1, first + 2] = 1.0
            M[first + 2, after] = 1.0
    return M


def stationary(M: np.ndarray) -> np.ndarray:
    """The stationary distribution ``pi = pi M`` (least squares with ``sum(pi) = 1``)."""
    S = len(M)
    lhs = np.vstack([M.T - np.eye(S), np.ones((1, S))])
    pi = np.linalg.lstsq(lhs, np.concatenate([np.zeros(S), [1.0]]), rcond=None)[0]
    pi = np.clip(pi, 0, None)
    return pi / pi.sum()


def context_offsets(order: int) -> np.ndarray:
    """Row offset of each order's contexts in the stacked emission table: ``sum_{q<r} 4^q``."""
    return np.concatenate([[0], np.cumsum(4 ** np.arange(order + 1))]).astype(np.int64)


def emission_probs(counts: Sequence[np.ndarray], order: int, pseudocount: float) -> np.ndarray:
    """Stacked (C, S, 4) probabilities from per-order counts ``counts[r]`` (S, 4^r, 4): smoothed, codon
    states collapsed to their codon's own context, in-frame stops forbidden (see module docstring)."""
    S = counts[0].shape[0]
    rows = []
    for r in range(order + 1):
        c = counts[r].astype(np.float64).copy()
        ctx = np.arange(4 ** r)
        for s in range(FSTART, S):
            m = min(r, codon_position(s))
            c[s] = counts[m][s][ctx & (4 ** m - 1)]
        p = (c + pseudocount) / (c.sum(-1, keepdims=True) + 4 * pseudocount)
        if r >= 2:
            _forbid_stops(p, ctx)
        rows.append(p.transpose(1, 0, 2))  # (4^r, S, 4)
    return np.ascontiguousarray(np.concatenate(rows))


def _forbid_stops(p: np.ndarray, ctx: np.ndarray) -> None:
    """Zero the stop-completing base in F3 and Rc (``p`` (S, 4^r, 4)) and renormalise those rows."""
    prev2, prev1 = (ctx >> 2) & 3, ctx & 3
    for state, codons in FORBIDDEN.items():
        for a, b, c in codons:
            p[state, (prev2 == a) & (prev1 == b), c] = 0.0
        p[state] /= p[state].sum(-1, keepdims=True)


@dataclass
class GeneHMM:
    """A fitted gene HMM: ``transitions`` (S, S), ``initial`` (S,), ``emissions`` (C, S, 4) stacked over
    orders 0..``order`` (row ``context_offsets(order)[r] + context code``)."""

    order: int
    transitions: np.ndarray
    initial: np.ndarray
    emissions: np.ndarray
    rates: GeneRates
    pseudocount: float = 0.5
    codon_states: bool = True

    def __post_init__(self) -> None:
        check_order(self.order)

    @property
    def n_states(self) -> int:
        return len(self.initial)

    @property
    def n_parameters(self) -> int:
        """Free parameters: 3 per emission row of each state (inner states per context; codon states per
        codon prefix) and the 4 fitted rates."""
        S = self.n_states
        inner = min(S, FSTART) * 3 * int((4 ** np.arange(self.order + 1)).sum())
        codon = (S - FSTART) // 3 * 3 * (1 + 4 + 16)
        return int(inner + codon + 4)

    def context_rows(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For (B, L) tokens: base codes (B, L), base mask (B, L) and the emission row of each position
        (B, L + 1), from the longest left context (at most ``order``) of consecutive bases."""
        tokens = np.asarray(tokens)
        B, L = tokens.shape
        valid = (tokens >= A_ID) & (tokens < A_ID + N_BASES)
        b = np.where(valid, tokens.astype(np.int64) - A_ID, 0)
        code = np.zeros((B, L + 1), np.int64)  # code of the up-to-`order` bases before each position
        run = np.zeros((B, L + 1), np.int64)
        mask = 4 ** self.order - 1
        for t in range(L):  # cheap: integer ops over B rows
            code[:, t + 1] = np.where(valid[:, t], ((code[:, t] << 2) | b[:, t]) & mask, 0)
            run[:, t + 1] = np.where(valid[:, t], np.minimum(run[:, t] + 1, self.order), 0)
        rows = context_offsets(self.order)[run] + (code & ((1 << (2 * run)) - 1))
        return b, valid, rows


def check_order(order: int) -> None:
    if not MIN_ORDER <= order <= MAX_ORDER:
        raise ConfigError(f"gene HMM order must be in {MIN_ORDER}..{MAX_ORDER} (the stop-codon rule needs the two "
                          f"previous bases), got {order}; use --gene-order 2..{MAX_ORDER}")


def predictive_logp(model: GeneHMM, tokens: np.ndarray) -> np.ndarray:
    """Scaled forward algorithm: (B, L) tokens -> (B, L, 4) natural-log ``P(x_{t+1} = A,C,G,T | x_0..x_t)``
    at row t (row L - 1 predicts the base after the window)."""
    b, valid, rows = model.context_rows(tokens)
    B, L = b.shape
    E, M = model.emissions, model.transitions
    out = np.empty((B, L, 4))
    ar = np.arange(B)
    pred = np.broadcast_to(model.initial, (B, model.n_states))
    here = E[rows[:, 0]]  # (B, S, 4): every state's emission row at position t
    for t in range(L):
        e = here[ar, :, b[:, t]]  # (B, S): P(x_t | state, context)
        alpha = pred * np.where(valid[:, t, None], e, 1.0)
        alpha /= alpha.sum(1, keepdims=True)
        pred = alpha @ M
        here = E[rows[:, t + 1]]
        out[:, t] = np.matmul(pred[:, None, :], here)[:, 0]
    with np.errstate(divide="ignore"):  # a forbidden stop: log 0 = -inf
        return np.log(out, out=out)
