"""Scoring genome language models base by base: the scoring-model interface and the likelihood.

Every evaluation and scoring command takes its model through one small interface,
:class:`ScoringModel`: an object with ``objective`` (``"causal"`` or ``"masked"``), ``max_len`` (the
longest window it accepts) and ``__call__(tokens) -> log_probs``, mapping a batch of token windows
(B, L) int64 (right-padded with ``PAD_ID`` 0) to natural-log probabilities (B, L, V) float. For a
causal model row ``t`` predicts token ``t + 1`` from tokens ``0..t``; for a masked model row ``t``
predicts token ``t`` (``MASK_ID`` 1 marks hidden positions). :class:`ModelScorer` adapts a
:class:`~reformer_seq.model.lm.ReformerLM` (eval mode, ``torch.inference_mode``, padding mask);
:class:`FunctionScorer` wraps a plain function (tests use oracles). :func:`run_queries` batches
:class:`Query` windows through a scorer.

Conventions shared by every number here:

* only A/C/G/T are ever targets (N is never scored, though it may be context);
* bits are ``-log2 p(true base)`` under the model's full output distribution (not renormalised
  over A/C/G/T), the quantity a training loss measures;
* top-1 accuracy is the argmax over A/C/G/T, ties split evenly (a uniform predictor scores
  exactly 25%).

**Likelihood** (:func:`likelihood`). Causal: each record is cut into windows of ``window`` bases
that overlap by one base, and every base but a record's first is scored once, from its left
context within its window. Masked: non-overlapping windows, ``mask_prob`` of the bases masked
(all replaced by ``MASK_ID``, seeded), scored at the masked bases.

Gaps are data: a window with no A/C/G/T to score (inside an assembly gap, a run of N longer than
the window) is skipped without a forward pass, and the N bases are counted
(:attr:`LikelihoodResult.n_skipped_n`).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from ...errors import CheckpointError, InputError
from ...runtime.device import resolve_device
from ...genome.encoded import EncodedRecord
from ...genome import tokenizers
from ...genome.tokenizers import A_ID, MASK_ID, PAD_ID

BASE_IDS = np.array(tokenizers.BASE_IDS)  # A C G T
LN2 = math.log(2.0)


@runtime_checkable
class ScoringModel(Protocol):
    """Anything that scores token windows: see the module docstring for the conventions."""

    objective: str  # "causal" | "masked"
    max_len: int

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """(B, L) int64 token ids, right-padded with PAD_ID -> (B, L, V) natural-log probabilities."""
        ...


@dataclass
class FunctionScorer:
    """A :class:`ScoringModel` from a plain function ``fn(tokens (B, L)) -> log_probs (B, L, V)``."""

    fn: Callable[[np.ndarray], np.ndarray]
    objective: str = "causal"
    max_len: int = 1 << 20

    def __post_init__(self) -> None:
        check_objective(self.objective)

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        return self.fn(tokens)


def check_objective(objective: str) -> None:
    """Raise unless ``objective`` is ``causal`` or ``masked``."""
    if objective not in ("causal", "masked"):
        raise ValueError(f"objective must be 'causal' or 'masked', got {objective!r}")


class ModelScorer:
    """Adapts a :class:`~reformer_seq.model.lm.ReformerLM` to :class:`ScoringModel`.

    Runs in eval mode under ``torch.inference_mode`` on ``device``, with the padding mask
    ``tokens != PAD_ID``; returns float32 log-softmax probabilities on the CPU.
    """

    def __init__(self, model: Any, objective: Optional[str] = None, device: str = "cpu") -> None:
        import torch

        self.torch = torch
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        causal = bool(model.config.causal)
        self.objective = objective or ("causal" if causal else "masked")
        check_objective(self.objective)
        if self.objective == "masked" and causal:
            raise CheckpointError("the checkpoint says objective 'masked' but its model is causal "
                                  "(model.causal true); a masked model needs bidirectional attention")
        if self.objective == "causal" and not causal:
            raise CheckpointError("the checkpoint says objective 'causal' but its model is bidirectional "
                                  "(model.causal false); evaluate it as a masked model")
        self.max_len = int(model.config.max_seq_len)
        self.vocab_size = int(model.config.vocab_size)

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=self.device)
            mask = x != PAD_ID
            logits = self.model(x, mask=None if bool(mask.all()) else mask)
            return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()


# ====================================================================== running queries
@dataclass
class Query:
    """One window to score: ``tokens`` (L,) input; ``positions`` (n,) indices of the predicted
    tokens in the window; ``targets`` (k, n) true token ids (k target sets scored on the same pass)."""

    tokens: np.ndarray
    positions: np.ndarray
    targets: np.ndarray


def _query_rows(objective: str, positions: np.ndarray) -> np.ndarray:
    return positions - 1 if objective == "causal" else positions


def expected_top1(logp_bases: np.ndarray, target_index: np.ndarray) -> np.ndarray:
    """Top-1 correctness (…,) with ties split evenly; ``logp_bases`` (…, 4), ``target_index`` (…,) in 0..3."""
    mx = logp_bases.max(axis=-1, keepdims=True)
    is_max = logp_bases == mx
    hit = np.take_along_axis(is_max, target_index[..., None], axis=-1)[..., 0]
    return hit / is_max.sum(axis=-1)


def run_queries(scorer: ScoringModel, queries: Iterable[Query], batch_size: int = 8, total: Optional[int] = None,
                desc: str = "scoring", progress: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Score queries in batches; yields ``(logp, correct)`` per query, each (k, n) float64, in order.

    ``logp`` is the natural-log probability of each target, ``correct`` its top-1 correctness.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    bar = tqdm(total=total, desc=desc, unit="win", disable=not progress, leave=False, dynamic_ncols=True)
    batch: list[Query] = []

    def flush() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # a query with nothing to score (a window inside an assembly gap) gets empty results
        # without a forward pass
        todo = [q for q in batch if len(q.positions)]
        out = _score_batch(scorer, todo) if todo else None
        i = 0
        for q in batch:
            tgt = np.atleast_2d(np.asarray(q.targets, dtype=np.int64))  # (k, n)
            if not len(q.positions):
                empty = np.zeros((len(tgt), 0))
                yield empty, empty.copy()
                continue
            assert out is not None  # scored: this query is in ``todo``
            lp = out[i, _query_rows(scorer.objective, q.positions)].astype(np.float64)  # (n, V)
            i += 1
            logp = np.take_along_axis(lp[None].repeat(len(tgt), 0), tgt[..., None], axis=-1)[..., 0]
            correct = expected_top1(lp[:, BASE_IDS][None].repeat(len(tgt), 0), tgt - A_ID)
            yield logp, correct
        bar.update(len(batch))

    for q in queries:
        batch.append(q)
        if len(batch) == batch_size:
            yield from flush()
            batch = []
    if batch:
        yield from flush()
    bar.close()


def _score_batch(scorer: ScoringModel, batch: Sequence[Query]) -> np.ndarray:
    """The scorer's (B, L, V) log-probabilities for ``batch``, right-padded with ``PAD_ID``."""
    L = max(len(q.tokens) for q in batch)
    x = np.full((len(batch), L), PAD_ID, dtype=np.int64)
    for i, q in enumerate(batch):
        x[i, :len(q.tokens)] = q.tokens
    out = np.asarray(scorer(x))
    if out.ndim != 3 or out.shape[:2] != x.shape or out.shape[2] <= int(BASE_IDS.max()):
        raise ValueError(f"scoring model returned shape {out.shape} for tokens {x.shape}; expected "
                         f"(B, L, V) log-probabilities with V > {int(BASE_IDS.max())}")
    return out


# ====================================================================== likelihood
@dataclass
class LikelihoodResult:
    """Totals over the scored bases; ``scored[r]`` (L_r,) bool marks record r's scored bases."""

    objective: str
    window: int
    n_bases: int
    nats: float  # sum of -ln p(true base)
    correct: float  # sum of top-1 correctness
    scored: list[np.ndarray]
    mask_prob: Optional[float] = None
    n_skipped_n: int = 0  # bases never scored because they are N (or another non-A/C/G/T code)

    @property
    def bits_per_base(self) -> float:
        return self.nats / LN2 / self.n_bases if self.n_bases else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.n_bases if self.n_bases else float("nan")


def is_base(ids: np.ndarray) -> np.ndarray:
    """Where ``ids`` are A/C/G/T tokens (bool, same shape)."""
    ids = np.asarray(ids)
    return (ids >= BASE_IDS[0]) & (ids <= BASE_IDS[-1])


def likelihood_windows(length: int, window: int, objective: str, overlap: int = 1) -> np.ndarray:
    """(K, 2) ``[start, end)`` rows covering a record: causal windows overlap by ``overlap`` bases
    (default one), masked ones tile."""
    if objective == "causal":
        if length < 2:
            return np.zeros((0, 2), np.int64)
        starts = np.arange(0, length - overlap, window - overlap, dtype=np.int64)
    else:
        starts = np.arange(0, length, window, dtype=np.int64)
    return np.stack([starts, np.minimum(starts + window, length)], axis=1)


def _resolve_window(window: Optional[int], scorer: ScoringModel) -> int:
    window = int(min(window or scorer.max_len, scorer.max_len))
    if window < 2:
        raise InputError(f"window must be >= 2 bases, got {window}")
    return window


def iter_likelihood(records: Sequence[EncodedRecord], scorer: ScoringModel, window: Optional[int] = None,
                    batch_size: int = 8, mask_prob: float = 0.15, seed: int = 0, progress: bool = True,
                    overlap: int = 1) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """The per-window scores behind :func:`likelihood`, in window order: ``(record index, positions (n,)
    in the record, logp (n,) natural-log probability of each scored base, top-1 correctness (n,))``.

    Causal windows overlap by ``overlap`` bases (1 <= overlap < window): a window's first
    ``overlap`` bases are context only (the first window of a record scores from its second
    base), so every base but a record's first is scored once, with at least ``overlap`` bases of
    left context when it is not in the first window. Masked: see the module docstring.
    """
    objective = scorer.objective
    check_objective(objective)
    window = _resolve_window(window, scorer)
    if objective == "masked" and not 0 < mask_prob <= 1:
        raise InputError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if objective == "causal" and not 1 <= overlap < window:
        raise InputError(f"overlap must be at least 1 and below the window ({window}), got {overlap}")
    plan = [(ri, int(s), int(e)) for ri, r in enumerate(records)
            for s, e in likelihood_windows(len(r), window, objective, overlap)]
    rng = np.random.default_rng(seed)
    where: deque[tuple[int, np.ndarray]] = deque()  # (record, positions) of queries handed out, not yet scored

    def queries() -> Iterator[Query]:
        for ri, s, e in plan:
            tokens = np.asarray(records[ri].ids[s:e]).astype(np.int64)
            base = is_base(tokens)
            if objective == "causal":
                first = 1 if s == 0 else overlap
                pos = np.flatnonzero(base[first:]) + first
                inp = tokens
            else:
                cand = np.flatnonzero(base)
                pick = rng.random(cand.size) < mask_prob
                if cand.size and not pick.any():
                    pick[rng.integers(cand.size)] = True
                pos = cand[pick]
                inp = tokens.copy()
                inp[pos] = MASK_ID
            where.append((ri, s + pos))
            yield Query(inp, pos, tokens[pos][None])

    for logp, corr in run_queries(scorer, queries(), batch_size, total=len(plan), desc="likelihood", progress=progress):
        ri, pos = where.popleft()
        if pos.size:  # a window with no A/C/G/T (inside an assembly gap) is skipped
            yield ri, pos, logp[0], corr[0]


def likelihood(records: Sequence[EncodedRecord], scorer: ScoringModel, window: Optional[int] = None,
               batch_size: int = 8, mask_prob: float = 0.15, seed: int = 0, progress: bool = True) -> LikelihoodResult:
    """Bits per base (causal) or masked-token accuracy and bits (masked) over every record; see module docstring."""
    window = _resolve_window(window, scorer)
    scored = [np.zeros(len(r), dtype=bool) for r in records]
    n, nats, correct = 0, 0.0, 0.0
    for ri, pos, logp, corr in iter_likelihood(records, scorer, window, batch_size, mask_prob, seed, progress):
        scored[ri][pos] = True
        n += logp.shape[0]
        nats -= float(logp.sum())
        correct += float(corr.sum())
    objective = scorer.objective
    n_gap = sum(int((~is_base(r.ids)).sum()) for r in records)
    return LikelihoodResult(objective, window, n, nats, correct, scored, mask_prob if objective == "masked" else None,
                            n_gap)



# ====================================================================== windows
def span_window(length: int, start: int, end: int, window: int, causal: bool) -> tuple[int, int]:
    """A ``window``-base ``[lo, hi)`` centred on ``[start, end)`` within ``[0, length)`` (causal: ``lo < start``)."""
    centre = (start + end) // 2
    lo = max(0, min(centre - window // 2, length - window))
    hi = min(length, lo + window)
    if causal and lo >= start:
        lo = max(0, start - 1)
        hi = max(end, min(length, lo + window))
    return lo, max(hi, end)


def default_window(info: dict, max_len: int) -> int:
    """The checkpoint's training window (``info["train_data"]["seq_len"]``), capped at ``max_len`` (the default
    without one)."""
    td = info.get("train_data") if isinstance(info, dict) else None
    seq_len = td.get("seq_len") if isinstance(td, dict) else None
    return int(min(seq_len or max_len, max_len))
