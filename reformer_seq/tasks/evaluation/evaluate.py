"""Evaluating genome language models: bits per base against Markov baselines, and motif masking.

The logic takes any scoring model through one small interface, :class:`ScoringModel`: an object
with ``objective`` (``"causal"`` or ``"masked"``), ``max_len`` (the longest window it accepts)
and ``__call__(tokens) -> log_probs``, mapping a batch of token windows (B, L) int64 (right-padded
with ``PAD_ID`` 0) to natural-log probabilities (B, L, V) float. For a causal model row ``t``
predicts token ``t + 1`` from tokens ``0..t``; for a masked model row ``t`` predicts token ``t``
(``MASK_ID`` 1 marks hidden positions). :class:`ModelScorer` adapts a
:class:`~reformer_seq.model.lm.ReformerLM` (eval mode, ``torch.inference_mode``, padding mask);
:class:`FunctionScorer` wraps a plain function (tests use oracles).

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

**Baselines** (:func:`markov_baselines`) on exactly the scored bases: base composition (order 0)
and an order-k Markov chain with add-0.5 smoothing, both fitted on the checkpoint's training data
(``info["train_data"]``: the train region of each record, i.e. all but its last ``val_fraction``)
with k chosen (0..12) by bits per base on the validation region. A base whose left context is
shorter than k (record start, next to an N) uses the longest order its context allows. Counting is
vectorised (``np.bincount`` / ``np.unique`` on 2-bit k-mer codes): E. coli takes about a second per
order. :func:`markov_holdout_table` reproduces the reference figure (order 6, first 90% of E. coli
-> 1.934 bits per base on the last 10%).

**Motif masking** (:func:`motif_masking`). Each motif's PSSM scans the sequences on both
strands (:mod:`reformer_seq.tasks.motifs`); overlapping hits of a motif are reduced to the best one.
For each site (up to ``max_sites`` per motif, a seeded random subset beyond) a window of
``motif_window`` bases centred on it is scored: a masked model sees the whole site masked, a causal
model scores each site base from its left context. The same is done for one control span per site:
the same length, in the same record, overlapping no site of any motif and no N, with the GC count
closest to the site's (exactly matched where possible, ties broken at random). True versus
shuffled: the site's bases are permuted (seeded); a causal model compares the window's
log-likelihood with the real and the shuffled site (the bases before the site are identical, so the
sum runs from the site's start to the window's end), a masked model compares
``log p(site bases | flanks)`` with the site masked. A win is real > shuffled, a tie counts half;
the p-value is a one-sided sign test (binomial tail at 1/2, ties dropped). Per motif position
(motif orientation) the site accuracy is reported beside the column's information content (bits,
relative entropy to the background) and drawn as a PNG.

:func:`evaluate_checkpoint` runs everything for a checkpoint and writes ``report.json``,
``report.md`` and ``profiles/*.png`` atomically (:func:`write_report`).
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from ...errors import CheckpointError, InputError
from ...runtime.device import resolve_device
from ...runtime.files import atomic_write, atomic_write_json, atomic_write_text
from ...genome.fasta import EncodedRecord, load_genome
from ..motifs import (DEFAULT_PSEUDOCOUNT, PSSM, Motif, ScanIndex, Site, Threshold, background_from_records,
                     make_pssm, non_overlapping, scan_records)
from ...genome.tokenizers import MASK_ID, PAD_ID, NucleotideTokenizer

PathLike = Union[str, os.PathLike]
BASE_IDS = np.array(NucleotideTokenizer.base_ids)  # A C G T = 4 5 6 7
A_ID = int(BASE_IDS[0])
LN2 = math.log(2.0)
DEFAULT_MAX_ORDER = 12
DEFAULT_MOTIF_WINDOW = 512
DEFAULT_MAX_SITES = 1000
_DENSE_MAX_ORDER = 10  # Markov tables up to this order are dense arrays (4^(k+1) counts)


# ====================================================================== scoring-model interface
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
        _check_objective(self.objective)

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        return self.fn(tokens)


def _check_objective(objective: str) -> None:
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
        _check_objective(self.objective)
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
        L = max(len(q.tokens) for q in batch)
        x = np.full((len(batch), L), PAD_ID, dtype=np.int64)
        for i, q in enumerate(batch):
            x[i, :len(q.tokens)] = q.tokens
        out = np.asarray(scorer(x))
        if out.ndim != 3 or out.shape[:2] != x.shape or out.shape[2] <= int(BASE_IDS.max()):
            raise ValueError(f"scoring model returned shape {out.shape} for tokens {x.shape}; expected "
                             f"(B, L, V) log-probabilities with V > {int(BASE_IDS.max())}")
        for i, q in enumerate(batch):
            rows = _query_rows(scorer.objective, q.positions)
            lp = out[i, rows].astype(np.float64)  # (n, V)
            tgt = np.asarray(q.targets, dtype=np.int64).reshape(-1, len(rows))  # (k, n)
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

    @property
    def bits_per_base(self) -> float:
        return self.nats / LN2 / self.n_bases if self.n_bases else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.n_bases if self.n_bases else float("nan")


def _is_base(ids: np.ndarray) -> np.ndarray:
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
    _check_objective(objective)
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
            base = _is_base(tokens)
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
    return LikelihoodResult(objective, window, n, nats, correct, scored, mask_prob if objective == "masked" else None)


# ====================================================================== Markov baselines
@dataclass
class Segment:
    """Region ``[lo, hi)`` of a record's token ids ``ids`` (context before ``lo`` may be used when scoring)."""

    ids: np.ndarray
    lo: int = 0
    hi: Optional[int] = None

    def __post_init__(self) -> None:
        self.hi = len(self.ids) if self.hi is None else self.hi


def _bases_and_runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-bit base codes (L,) int64 (0 where not a base) and the run of consecutive bases just before each position."""
    ids = np.asarray(ids)
    valid = _is_base(ids)
    b = np.where(valid, ids.astype(np.int64) - A_ID, 0)
    idx = np.arange(len(ids), dtype=np.int64)
    last_bad = np.maximum.accumulate(np.where(valid, -1, idx)) if len(ids) else idx
    run_incl = idx - last_bad  # consecutive bases ending at t (0 at a non-base)
    run_before = np.concatenate([[0], run_incl[:-1]]) if len(ids) else idx
    return b, run_before


def _kmer_codes(b: np.ndarray, targets: np.ndarray, order: int) -> np.ndarray:
    """Codes (n,) of the (order+1)-mers ending at ``targets``: the target base in the low 2 bits."""
    code = b[targets].copy()
    for j in range(1, order + 1):
        code += b[targets - j] << (2 * j)
    return code


@dataclass
class _Table:
    """Counts of each context followed by A, C, G, T: dense (4^order, 4) or sparse (sorted ``keys``, (n, 4))."""

    order: int
    dense: Optional[np.ndarray] = None
    keys: Optional[np.ndarray] = None
    counts: Optional[np.ndarray] = None

    def lookup(self, ctx: np.ndarray) -> np.ndarray:
        """Counts (n, 4) of each context code in ``ctx`` (n,) followed by A, C, G, T."""
        if self.dense is not None:
            return self.dense[ctx]
        if not len(self.keys):
            return np.zeros((len(ctx), 4), np.int64)
        order = np.argsort(ctx, kind="stable")  # sorted needles make the search cache-friendly
        i = np.empty(len(ctx), np.int64)
        i[order] = np.searchsorted(self.keys, ctx[order])
        i = np.minimum(i, len(self.keys) - 1)
        return np.where((self.keys[i] == ctx)[:, None], self.counts[i], 0)


def _count(codes: np.ndarray, order: int) -> _Table:
    if order <= _DENSE_MAX_ORDER:
        return _Table(order, dense=np.bincount(codes, minlength=4 ** (order + 1)).astype(np.int64).reshape(-1, 4))
    codes = np.sort(codes)
    edge = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], edge]) if codes.size else np.zeros(0, np.int64)
    full = codes[starts]  # distinct (order+1)-mers, sorted
    n_full = np.diff(np.concatenate([starts, [codes.size]]))
    ctx = full >> 2
    new_ctx = np.concatenate([[True], ctx[1:] != ctx[:-1]]) if ctx.size else np.zeros(0, bool)
    keys = ctx[new_ctx]
    counts = np.zeros((len(keys), 4), np.int64)
    counts[np.cumsum(new_ctx) - 1, full & 3] = n_full
    return _Table(order, keys=keys, counts=counts)


@dataclass
class MarkovModel:
    """Fixed-order Markov chain over A/C/G/T with add-``pseudocount`` smoothing and back-off to
    lower orders where a base's left context is shorter (record start, next to N)."""

    order: int
    pseudocount: float = 0.5
    tables: list[_Table] = field(default_factory=list)
    n_train: int = 0

    @classmethod
    def fit(cls, segments: Sequence[Segment], order: int, pseudocount: float = 0.5) -> "MarkovModel":
        """Count every (r+1)-mer, r = 0..order, lying wholly inside a segment's ``[lo, hi)``."""
        if not 0 <= order <= 30:
            raise InputError(f"Markov order must be in 0..30, got {order}")
        per_order: list[list[np.ndarray]] = [[] for _ in range(order + 1)]
        n = 0
        for seg in segments:
            ids = np.asarray(seg.ids[seg.lo:seg.hi])
            b, run = _bases_and_runs(ids)
            valid = _is_base(ids)
            n += int(valid.sum())
            code = b.copy()  # code[t] = the (r+1)-mer ending at t, built up one order at a time
            for r in range(order + 1):
                if r:
                    code[r:] += b[:-r] << (2 * r) if len(b) > r else 0
                per_order[r].append(code[valid & (run >= r)])
        tables = [_count(np.concatenate(c) if c else np.zeros(0, np.int64), r) for r, c in enumerate(per_order)]
        return cls(order, pseudocount, tables, n)

    def truncated(self, order: int) -> "MarkovModel":
        """The same counts used as an order-``order`` model (order <= self.order)."""
        if order > self.order:
            raise ValueError(f"cannot raise a fitted order-{self.order} model to order {order}")
        return MarkovModel(order, self.pseudocount, self.tables[:order + 1], self.n_train)

    def score(self, ids: np.ndarray, positions: np.ndarray, _prepared: Optional[tuple[np.ndarray, np.ndarray]] = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """``(log2 p, top-1 correctness)`` (n,) of the bases at ``positions`` (base tokens) of ``ids``."""
        positions = np.asarray(positions, dtype=np.int64)
        hi = int(positions.max()) + 1 if positions.size else 0
        b, run = _prepared if _prepared is not None else _bases_and_runs(np.asarray(ids[:hi]))
        eff = np.minimum(run[positions], self.order)
        logp = np.empty(positions.size)
        correct = np.empty(positions.size)
        a = self.pseudocount
        for r in np.unique(eff):
            sel = np.flatnonzero(eff == r) if r != self.order or eff.min() < r else slice(None)
            t = positions[sel]
            ctx = _kmer_codes(b, t, int(r)) >> 2
            c = self.tables[int(r)].lookup(ctx).astype(np.float64)  # (n, 4)
            x = b[t]
            logp[sel] = np.log2((c[np.arange(len(t)), x] + a) / (c.sum(1) + 4 * a))
            correct[sel] = expected_top1(c, x)
        return logp, correct

    def bits_per_base(self, segments: Sequence[Segment]) -> float:
        """Mean ``-log2 p`` over every A/C/G/T in the segments' regions."""
        total, n = 0.0, 0
        for seg in segments:
            pos = np.flatnonzero(_is_base(np.asarray(seg.ids[seg.lo:seg.hi]))) + seg.lo
            if pos.size:
                lp, _ = self.score(seg.ids, pos)
                total -= float(lp.sum())
                n += pos.size
        return total / n if n else float("nan")


def split_segments(records: Sequence[Union[EncodedRecord, np.ndarray]], val_fraction: float
                   ) -> tuple[list[Segment], list[Segment]]:
    """Train and validation segments of each record (validation = the last ``val_fraction``)."""
    from ...genome.windows import split_bounds

    train, val = [], []
    for r in records:
        ids = r.ids if isinstance(r, EncodedRecord) else r
        lo, hi = split_bounds(len(ids), "train", val_fraction)
        train.append(Segment(ids, lo, hi))
        lo, hi = split_bounds(len(ids), "val", val_fraction)
        val.append(Segment(ids, lo, hi))
    return train, val


def markov_holdout_table(records: Sequence[Union[EncodedRecord, np.ndarray]], orders: Iterable[int] = range(13),
                         val_fraction: float = 0.1, pseudocount: float = 0.5) -> dict[int, float]:
    """Bits per base on the last ``val_fraction`` of each record for Markov models fitted on the rest.

    E. coli K-12 (``data/Ecoli_K12_MG1655.fasta.gz``): order 6 gives 1.934 (the reference figure).
    """
    orders = list(orders)
    train, val = split_segments(records, val_fraction)
    full = MarkovModel.fit(train, max(orders), pseudocount)
    return {k: full.truncated(k).bits_per_base(val) for k in orders}


@dataclass
class BaselineData:
    """Where baselines are fitted: train/validation segments and a description for the report."""

    train: list[Segment]
    val: list[Segment]
    source: str
    in_sample: bool = False


def baseline_data_from_info(info: dict, train_fasta: Optional[PathLike] = None, val_fraction: float = 0.1,
                            strict: bool = False) -> tuple[Optional[BaselineData], Optional[str]]:
    """The checkpoint's training data (or ``train_fasta``) as segments; ``(None, reason)`` when unavailable.
    ``strict``: characters outside IUPAC are an error (else N, with a warning)."""
    td = info.get("train_data") if isinstance(info, dict) else None
    if train_fasta is not None:
        paths, vf = [Path(train_fasta)], val_fraction
    elif isinstance(td, dict) and td.get("paths"):
        if td.get("alphabet", "nucleotide") != "nucleotide":
            return None, f"the checkpoint was trained on {td.get('alphabet')!r} data; baselines need nucleotides"
        paths, vf = [Path(p) for p in td["paths"]], float(td.get("val_fraction", val_fraction))
    else:
        return None, "the checkpoint's config.json names no training data (train_data); pass --train-fasta"
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        return None, f"training FASTA not found: {', '.join(missing)}; pass --train-fasta"
    source = ", ".join(str(p) for p in paths) + f" (train region; its last {vf:g} chooses k)"
    shas = td.get("sha256") if train_fasta is None and isinstance(td, dict) else None
    if shas and len(shas) == len(paths):
        from ...genome.fasta import file_sha256

        changed = [str(p) for p, h in zip(paths, shas) if file_sha256(p) != h]
        if changed:
            source += f" [warning: {', '.join(changed)} changed since training]"
    records = [r for p in paths for r in load_genome(p, strict=strict)]
    train, val = split_segments(records, vf)
    return BaselineData(train, val, source), None


def fit_markov(data: BaselineData, max_order: int = DEFAULT_MAX_ORDER, pseudocount: float = 0.5
               ) -> tuple[MarkovModel, int, dict[int, float]]:
    """Counts up to ``max_order`` on ``data.train`` and the order k chosen on ``data.val`` (0 without one):
    ``(model, k, validation bits per base by order)``; ``model.truncated(k)`` is the baseline."""
    full = MarkovModel.fit(data.train, max_order, pseudocount)
    has_val = any(s.hi > s.lo for s in data.val)
    val_bits = {k: full.truncated(k).bits_per_base(data.val) for k in range(max_order + 1)} if has_val else {}
    best = min(val_bits, key=lambda k: val_bits[k]) if val_bits else 0
    return full, best, val_bits


def markov_baselines(records: Sequence[EncodedRecord], scored: Sequence[np.ndarray], data: BaselineData,
                     max_order: int = DEFAULT_MAX_ORDER, pseudocount: float = 0.5) -> dict[str, Any]:
    """Order-0 and the best order-k (k chosen on ``data.val``) scored on the ``scored`` (L_r,) bool masks."""
    full, best, val_bits = fit_markov(data, max_order, pseudocount)

    def on_scored(model: MarkovModel) -> dict[str, float]:
        bits, corr, n = 0.0, 0.0, 0
        for rec, mask in zip(records, scored):
            pos = np.flatnonzero(mask)
            if pos.size:
                lp, c = model.score(rec.ids, pos)
                bits -= float(lp.sum())
                corr += float(c.sum())
                n += pos.size
        return {"bits_per_base": bits / n if n else None, "accuracy": corr / n if n else None, "n_bases": n}

    out = {"order0": {**on_scored(full.truncated(0)), "fitted_on": data.source, "pseudocount": pseudocount},
           "markov": {"order": best, **on_scored(full.truncated(best)), "fitted_on": data.source,
                      "pseudocount": pseudocount,
                      "val_bits_per_base_by_order": {str(k): round(v, 5) for k, v in val_bits.items()}}}
    if data.in_sample:
        for v in out.values():
            v["in_sample"] = True
    return out


# ====================================================================== motif masking
def sign_test_pvalue(wins: int, losses: int) -> float:
    """One-sided sign test: P(X >= wins) for X ~ Binomial(wins + losses, 1/2); ties are left out."""
    n = wins + losses
    if n == 0:
        return 1.0
    if wins <= 0:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * LN2 for i in range(wins, n + 1)]
    m = max(logs)
    return float(min(1.0, math.exp(m) * sum(math.exp(v - m) for v in logs)))


def span_window(length: int, start: int, end: int, window: int, causal: bool) -> tuple[int, int]:
    """A ``window``-base ``[lo, hi)`` centred on ``[start, end)`` within ``[0, length)`` (causal: ``lo < start``)."""
    centre = (start + end) // 2
    lo = max(0, min(centre - window // 2, length - window))
    hi = min(length, lo + window)
    if causal and lo >= start:
        lo = max(0, start - 1)
        hi = max(end, min(length, lo + window))
    return lo, max(hi, end)


class _ControlPicker:
    """GC-matched control spans: same record and length, no site of any motif, no N."""

    def __init__(self, records: Sequence[EncodedRecord], occupied: Sequence[np.ndarray], rng: np.random.Generator,
                 min_start: int) -> None:
        self.records, self.occupied, self.rng, self.min_start = records, occupied, rng, min_start
        self._cache: dict[tuple[int, int], tuple[np.ndarray, list[np.ndarray]]] = {}

    def _groups(self, ri: int, w: int) -> tuple[np.ndarray, list[np.ndarray]]:
        key = (ri, w)
        if key not in self._cache:
            ids = np.asarray(self.records[ri].ids)
            n = len(ids) - w + 1
            if n <= 0:
                self._cache[key] = (np.zeros(0, np.int64), [])
            else:
                gc = np.concatenate([[0], np.cumsum((ids == 5) | (ids == 6))])
                bad = np.concatenate([[0], np.cumsum(~_is_base(ids) | self.occupied[ri])])
                starts = np.arange(n)
                ok = (bad[starts + w] - bad[starts] == 0) & (starts >= self.min_start)
                g = (gc[starts + w] - gc[starts])[ok]
                st = starts[ok]
                groups = [st[g == v] for v in range(w + 1)]
                self._cache[key] = (np.array([len(x) for x in groups]), groups)
        return self._cache[key]

    def pick(self, site: Site) -> Optional[tuple[int, bool]]:
        """``(start, exactly GC-matched)`` of a control for ``site``, or None when the record has no room."""
        w = site.end - site.start
        sizes, groups = self._groups(site.record_index, w)
        if not len(groups) or sizes.sum() == 0:
            return None
        ids = np.asarray(self.records[site.record_index].ids[site.start:site.end])
        g = int(((ids == 5) | (ids == 6)).sum())
        avail = np.flatnonzero(sizes > 0)
        d = np.abs(avail - g)
        v = int(avail[self.rng.choice(np.flatnonzero(d == d.min()))])
        return int(self.rng.choice(groups[v])), v == g


def _shuffle_site(bases: np.ndarray, rng: np.random.Generator, tries: int = 20) -> np.ndarray:
    """A permutation of ``bases`` that differs from it when any does (else ``bases`` itself)."""
    if len(np.unique(bases)) < 2:
        return bases.copy()
    for _ in range(tries):
        p = rng.permutation(bases)
        if not np.array_equal(p, bases):
            return p
    return p


@dataclass
class _SiteJob:
    motif: int
    site: Site
    site_len: int  # number of site targets at the front of the causal query
    shuffled: np.ndarray


def _site_queries(rec: EncodedRecord, site: Site, shuffled: np.ndarray, window: int, objective: str
                  ) -> list[Query]:
    """Queries for one site: [site(+shuffled targets)] for masked, [real, shuffled] windows for causal."""
    causal = objective == "causal"
    lo, hi = span_window(len(rec), site.start, site.end, window, causal)
    tokens = np.asarray(rec.ids[lo:hi]).astype(np.int64)
    s, e = site.start - lo, site.end - lo
    if not causal:
        inp = tokens.copy()
        inp[s:e] = MASK_ID
        pos = np.arange(s, e)
        return [Query(inp, pos, np.stack([tokens[s:e], shuffled]))]
    pos = np.arange(s, len(tokens))
    pos = pos[_is_base(tokens[pos])]  # the site is all bases; later N are skipped
    shuf = tokens.copy()
    shuf[s:e] = shuffled
    return [Query(tokens, pos, tokens[pos][None]), Query(shuf, pos, shuf[pos][None])]


def _control_query(rec: EncodedRecord, start: int, w: int, window: int, objective: str) -> Query:
    causal = objective == "causal"
    lo, hi = span_window(len(rec), start, start + w, window, causal)
    tokens = np.asarray(rec.ids[lo:hi]).astype(np.int64)
    s = start - lo
    pos = np.arange(s, s + w)
    inp = tokens if causal else tokens.copy()
    if not causal:
        inp[pos] = MASK_ID
    return Query(inp, pos, tokens[pos][None])


def motif_masking(records: Sequence[EncodedRecord], scorer: ScoringModel, motifs: Sequence[Motif],
                  threshold: Union[Threshold, str, float, None] = None, background: Optional[np.ndarray] = None,
                  window: int = DEFAULT_MOTIF_WINDOW, batch_size: int = 8, max_sites: Optional[int] = DEFAULT_MAX_SITES,
                  pseudocount: float = DEFAULT_PSEUDOCOUNT, seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """Per-motif site/control accuracy and bits, true-vs-shuffled test and per-position profile.

    Returns one dict per motif (in the order given; a motif without sites has ``n_sites`` 0 and
    null metrics). See the module docstring for the protocol.
    """
    objective = scorer.objective
    _check_objective(objective)
    causal = objective == "causal"
    threshold = Threshold.parse(threshold)
    bg = background if background is not None else background_from_records(records)
    window = int(min(window, scorer.max_len))
    rng = np.random.default_rng(seed)

    from tqdm.auto import tqdm

    pssms: list[PSSM] = []
    index = ScanIndex.build(records)
    occupied = [np.zeros(len(r), dtype=bool) for r in records]
    found: list[list[Site]] = []
    cuts: list[float] = []
    for m in tqdm(motifs, desc="scanning motifs", unit="motif", leave=False, dynamic_ncols=True,
                  disable=not progress or len(motifs) < 5):
        if m.length + 1 > window:
            raise InputError(f"motif {m.label} is {m.length} bases long; the {window}-base scoring window must be "
                             f"longer; raise the motif window (--motif-window)")
        p = make_pssm(m, bg, pseudocount)
        pssms.append(p)
        cuts.append(threshold.score_for(p))
        hits = scan_records(records, p, cuts[-1], index=index)  # the cut in bits: computed once
        for s in hits:  # controls avoid every hit of every motif
            occupied[s.record_index][s.start:s.end] = True
        found.append(non_overlapping(hits))

    picker = _ControlPicker(records, occupied, rng, min_start=1 if causal else 0)

    jobs: list[_SiteJob] = []
    controls: list[tuple[int, int, bool]] = []  # (motif, start, gc matched) aligned with jobs (start -1: none)
    for mi, sites in enumerate(found):
        usable = [s for s in sites if not causal or s.start >= 1]
        if max_sites is not None and len(usable) > max_sites:
            keep = np.sort(rng.choice(len(usable), size=max_sites, replace=False))
            usable = [usable[i] for i in keep]
        for s in usable:
            rec = records[s.record_index]
            bases = np.asarray(rec.ids[s.start:s.end]).astype(np.int64)
            shuffled = _shuffle_site(bases, rng)
            jobs.append(_SiteJob(mi, s, s.end - s.start, shuffled))
            c = picker.pick(s)
            controls.append((mi, -1, False) if c is None else (mi, c[0], c[1]))

    def queries() -> Iterator[Query]:  # built as they are scored: memory stays one batch deep
        for job, (_, cstart, _) in zip(jobs, controls):
            rec = records[job.site.record_index]
            yield from _site_queries(rec, job.site, job.shuffled, window, objective)
            if cstart >= 0:
                yield _control_query(rec, cstart, job.site_len, window, objective)

    total = len(jobs) * (2 if causal else 1) + sum(c[1] >= 0 for c in controls)
    results = iter(run_queries(scorer, queries(), batch_size, total=total, desc="motif sites", progress=progress))
    acc: list[dict[str, Any]] = [
        {"site_correct": [], "site_logp": [], "ctrl_correct": [], "ctrl_logp": [], "wins": 0, "losses": 0, "ties": 0,
         "gc_matched": 0, "n_controls": 0, "n_evaluated": 0, "controls": []} for _ in motifs]
    for job, (mi, cstart, matched) in zip(jobs, controls):
        a = acc[mi]
        w = job.site_len
        if causal:
            lp_real, corr_real = next(results)
            lp_shuf, _ = next(results)
            site_lp, site_corr = lp_real[0, :w], corr_real[0, :w]
            real_ll, shuf_ll = float(lp_real.sum()), float(lp_shuf.sum())
        else:
            lp, corr = next(results)
            site_lp, site_corr = lp[0], corr[0]
            real_ll, shuf_ll = float(lp[0].sum()), float(lp[1].sum())
        if job.site.strand == "-":  # motif orientation
            site_lp, site_corr = site_lp[::-1], site_corr[::-1]
        a["site_logp"].append(site_lp)
        a["site_correct"].append(site_corr)
        a["n_evaluated"] += 1
        diff = real_ll - shuf_ll
        if np.array_equal(job.shuffled, np.asarray(records[job.site.record_index].ids[job.site.start:job.site.end])) \
                or abs(diff) <= 1e-9 * max(1.0, abs(real_ll)):
            a["ties"] += 1
        elif diff > 0:
            a["wins"] += 1
        else:
            a["losses"] += 1
        if cstart >= 0:
            a["controls"].append((job.site.record_index, cstart, cstart + w, job.site))
            lp, corr = next(results)
            a["ctrl_logp"].append(lp[0])
            a["ctrl_correct"].append(corr[0])
            a["n_controls"] += 1
            a["gc_matched"] += int(matched)

    out = []
    for mi, m in enumerate(motifs):
        a, p, sites = acc[mi], pssms[mi], found[mi]
        ic = m.information_content(bg, pseudocount)
        r: dict[str, Any] = {
            "id": m.id, "name": m.name, "length": m.length, "source": m.source, "consensus": m.consensus(),
            "threshold": str(threshold), "threshold_score": _finite(cuts[mi]), "max_score": round(p.max_score, 4),
            "n_sites": len(sites), "n_plus": sum(s.strand == "+" for s in sites),
            "n_minus": sum(s.strand == "-" for s in sites),
            "n_records_with_site": len({s.record_index for s in sites}),
            "fraction_records_with_site": len({s.record_index for s in sites}) / max(1, len(records)),
            "n_evaluated": a["n_evaluated"], "n_controls": a["n_controls"],
            "control_gc_matched_fraction": a["gc_matched"] / a["n_controls"] if a["n_controls"] else None,
            "site_accuracy": None, "control_accuracy": None, "site_bits_per_base": None, "control_bits_per_base": None,
            "true_vs_shuffled_win_rate": None, "n_wins": a["wins"], "n_losses": a["losses"], "n_ties": a["ties"],
            "p_value": None,
            "per_position": {"information_content": [round(float(v), 4) for v in ic],
                             "site_accuracy": None, "site_bits_per_base": None},
        }
        if a["n_evaluated"]:
            sc = np.stack(a["site_correct"])  # (n, W)
            sl = np.stack(a["site_logp"])
            r["site_accuracy"] = float(sc.mean())
            r["site_bits_per_base"] = float(-sl.mean() / LN2)
            r["per_position"]["site_accuracy"] = [round(float(v), 5) for v in sc.mean(0)]
            r["per_position"]["site_bits_per_base"] = [round(float(v), 5) for v in -sl.mean(0) / LN2]
            n = a["wins"] + a["losses"] + a["ties"]
            r["true_vs_shuffled_win_rate"] = (a["wins"] + 0.5 * a["ties"]) / n
            r["p_value"] = sign_test_pvalue(a["wins"], a["losses"])
        if a["n_controls"]:
            r["control_accuracy"] = float(np.concatenate(a["ctrl_correct"]).mean())
            r["control_bits_per_base"] = float(-np.concatenate(a["ctrl_logp"]).mean() / LN2)
        if not math.isfinite(cuts[mi]):
            best_p = float(p.pvalue_of(np.array([p.max_score]))[0])
            r["note"] = (f"no window can pass {threshold}: the best possible p-value of this {m.length}-base motif "
                         f"is {best_p:.2g}; loosen --threshold (e.g. p:1e-4)")
        r["_sites"] = sites  # underscore keys stay out of report.json; they let callers list sites and controls
        r["_controls"] = a["controls"]  # (record index, start, end, the site it controls for)
        out.append(r)
    return out


def _finite(x: float) -> Optional[float]:
    return round(float(x), 4) if math.isfinite(x) else None


# ====================================================================== report
def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "motif"


def plot_profile(result: dict[str, Any], path: PathLike) -> Path:
    """A PNG of per-position site accuracy against information content for one motif result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    pp = result["per_position"]
    ic = np.asarray(pp["information_content"])
    x = np.arange(1, len(ic) + 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.4 * len(ic) + 2.5), 3.6), dpi=110)
    ax2 = ax.twinx()
    ax2.bar(x, ic, color="#c8d6e5", width=0.8, label="information content (bits)", zorder=1)
    ax2.set_ylabel("information content (bits)")
    ax2.set_ylim(0, max(2.0, float(ic.max()) * 1.05 if ic.size else 2.0))
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    if pp["site_accuracy"] is not None:
        ax.plot(x, pp["site_accuracy"], "o-", color="#c0392b", label="site accuracy", zorder=3)
    if result.get("control_accuracy") is not None:
        ax.axhline(result["control_accuracy"], color="#2c3e50", ls="--", lw=1, label="control accuracy")
    ax.axhline(0.25, color="grey", ls=":", lw=1, label="chance (0.25)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0.4, len(ic) + 0.6)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{i}\n{c}" for i, c in zip(x, result.get("consensus", ""))] if result.get("consensus")
                       else [str(i) for i in x], fontsize=7)
    ax.set_xlabel("motif position (consensus)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"{result['id']} {result['name']}  (n = {result['n_evaluated']} sites)", fontsize=10)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right", framealpha=0.8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    plt.close(fig)
    return path


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2e}" if (v != 0 and abs(v) < 10 ** -digits) else f"{v:.{digits}f}"
    return str(v)


def report_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the summary and a table per section."""
    lines = ["# seqformer evaluation", "",
             f"- FASTA: `{report['fasta']}` ({report['n_records']} record{'s' if report['n_records'] != 1 else ''}"
             + (f"; {report['split']} region, val_fraction {report['val_fraction']:g})"
                if report.get("split", "all") != "all" else ")"),
             f"- checkpoint: `{report['checkpoint']}` (step {report.get('checkpoint_step')}, objective "
             f"{report['objective']})", f"- window: {report['window']} bases", ""]
    lines += ["## Likelihood", "", "| model | bases | bits/base | top-1 accuracy |", "|---|---:|---:|---:|"]
    if report["objective"] == "causal":
        lines.append(f"| this model | {report['n_bases']:,} | {_fmt(report['bits_per_base'])} | {_fmt(report['accuracy'])} |")
    else:
        lines.append(f"| this model (masked {report['mask_prob']:g}) | {report['n_bases']:,} | "
                     f"{_fmt(report['masked_bits_per_base'])} | {_fmt(report['masked_accuracy'])} |")
    b = report.get("baselines") or {}
    if "order0" in b:
        lines.append(f"| composition (order 0) | {b['order0']['n_bases']:,} | {_fmt(b['order0']['bits_per_base'])} | "
                     f"{_fmt(b['order0']['accuracy'])} |")
    if "markov" in b:
        lines.append(f"| Markov order {b['markov']['order']} | {b['markov']['n_bases']:,} | "
                     f"{_fmt(b['markov']['bits_per_base'])} | {_fmt(b['markov']['accuracy'])} |")
    lines.append("")
    fitted = (b.get("markov") or b.get("order0") or {}).get("fitted_on")
    if fitted:
        lines.append(f"Baselines are scored on the same bases as the model, fitted on {fitted}" +
                     ("; Markov order chosen on the validation region (bits per order: "
                      + ", ".join(f"k={k}: {v:.4f}" for k, v in b["markov"]["val_bits_per_base_by_order"].items())
                      + ")." if "markov" in b else "."))
        if "markov" in b and report.get("split") == "val":
            lines.append("That validation region is the one scored here, so the Markov order is chosen on the "
                         "scored bases: the baseline is slightly optimistic, in its favour.")
    if b.get("note"):
        lines.append(b["note"] + ".")
    lines.append("")
    motifs = report.get("motifs") or []
    if motifs:
        ms = report.get("motif_settings", {})
        lines += ["## Motif masking", "",
                  f"Threshold {ms.get('threshold')}, pseudocount {ms.get('pseudocount')}, background "
                  f"{ms.get('background')}, window {ms.get('motif_window')} bases, at most {ms.get('max_sites')} "
                  f"sites per motif.", "",
                  "| motif | name | sites | evaluated | site acc | control acc | site bits | control bits | "
                  "true>shuffled | p-value | profile |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for m in motifs:
            prof = f"[png]({m['profile_png']})" if m.get("profile_png") else "–"
            lines.append(f"| {m['id']} | {m['name']} | {m['n_sites']} | {m['n_evaluated']} | {_fmt(m['site_accuracy'])} | "
                         f"{_fmt(m['control_accuracy'])} | {_fmt(m['site_bits_per_base'])} | "
                         f"{_fmt(m['control_bits_per_base'])} | {_fmt(m['true_vs_shuffled_win_rate'])} | "
                         f"{_fmt(m['p_value'])} | {prof} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``profiles/<motif>.png`` (each atomically)."""

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create the report folder ({e.strerror}); choose another --out") from None
    written: dict[str, Path] = {}
    for m in report.get("motifs", []):
        m.pop("_sites", None)
        if m.get("n_evaluated"):
            rel = Path("profiles") / f"{_safe_name(m['id'] + '_' + m['name'])}.png"
            plot_profile(m, out / rel)
            m["profile_png"] = str(rel)
            written[m["id"]] = out / rel
        else:
            m["profile_png"] = None
    atomic_write_json(out / "report.json", _jsonable(report))
    atomic_write_text(out / "report.md", report_markdown(report))
    written["report.json"], written["report.md"] = out / "report.json", out / "report.md"
    return written


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


# ====================================================================== top level
def evaluate_records(records: Sequence[EncodedRecord], scorer: ScoringModel, motifs: Sequence[Motif] = (),
                     threshold: Union[Threshold, str, float, None] = None, window: Optional[int] = None,
                     motif_window: int = DEFAULT_MOTIF_WINDOW, batch_size: int = 8, mask_prob: float = 0.15,
                     baseline_data: Optional[BaselineData] = None, baseline_note: Optional[str] = None,
                     max_order: int = DEFAULT_MAX_ORDER, max_sites: Optional[int] = DEFAULT_MAX_SITES,
                     pseudocount: float = DEFAULT_PSEUDOCOUNT, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Likelihood, baselines and motif masking for any :class:`ScoringModel`; returns the report dict.

    Without ``baseline_data`` the order-0 baseline is fitted on ``records`` themselves (in sample,
    marked so) and the Markov baseline is skipped, with ``baseline_note`` saying why.
    """
    if not records:
        raise InputError("no records to evaluate")
    lk = likelihood(records, scorer, window, batch_size, mask_prob, seed, progress)
    report: dict[str, Any] = {"objective": scorer.objective, "window": lk.window, "n_records": len(records),
                              "n_bases": lk.n_bases}
    if scorer.objective == "causal":
        report.update(bits_per_base=lk.bits_per_base, accuracy=lk.accuracy)
    else:
        report.update(masked_accuracy=lk.accuracy, masked_bits_per_base=lk.bits_per_base, mask_prob=mask_prob)
    if baseline_data is not None:
        report["baselines"] = markov_baselines(records, lk.scored, baseline_data, max_order)
    else:
        data = BaselineData([Segment(r.ids) for r in records], [], "the evaluated FASTA itself (in sample)", True)
        base = markov_baselines(records, lk.scored, data, max_order=0)
        report["baselines"] = {"order0": base["order0"],
                               "note": f"Markov baseline skipped: {baseline_note or 'no training data'}"}
    if motifs:
        bg = background_from_records(records)
        results = motif_masking(records, scorer, motifs, threshold, bg, motif_window, batch_size, max_sites,
                                pseudocount, seed, progress)
        report["motif_settings"] = {"threshold": str(Threshold.parse(threshold)), "pseudocount": pseudocount,
                                    "background": {l: round(float(v), 4) for l, v in zip("ACGT", bg)},
                                    "motif_window": int(min(motif_window, scorer.max_len)), "max_sites": max_sites,
                                    "seed": seed}
        report["motifs"] = results
    else:
        report["motifs"] = []
    return report


def region_records(records: Sequence[EncodedRecord], split: str, val_fraction: float) -> list[EncodedRecord]:
    """Each record cut to its ``split`` region (``train``/``val``/``all``; see :func:`~reformer_seq.genome.windows.split_bounds`)."""
    from ...genome.windows import split_bounds

    if split not in ("all", "train", "val"):
        raise InputError(f"split must be all, train or val, got {split!r}")
    if split == "all":
        return list(records)
    out = []
    for r in records:
        lo, hi = split_bounds(len(r), split, val_fraction)
        if hi > lo:
            out.append(EncodedRecord(r.id, f"{r.description} [{split} region {lo + 1}-{hi}]", r.ids[lo:hi]))
    if not out:
        raise InputError(f"the {split} region (val_fraction {val_fraction:g}) of every record is empty")
    return out


def _default_window(info: dict, max_len: int) -> int:
    td = info.get("train_data") if isinstance(info, dict) else None
    seq_len = td.get("seq_len") if isinstance(td, dict) else None
    return int(min(seq_len or max_len, max_len))


def evaluate_checkpoint(fasta: PathLike, checkpoint: PathLike, out_dir: Optional[PathLike] = None,
                        motif_files: Sequence[PathLike] = (), motif_ids: Optional[Sequence[str]] = None,
                        threshold: Union[Threshold, str, float, None] = None, batch_size: int = 8,
                        device: str = "auto", window: Optional[int] = None, motif_window: int = DEFAULT_MOTIF_WINDOW,
                        max_sites: Optional[int] = DEFAULT_MAX_SITES, train_fasta: Optional[PathLike] = None,
                        max_order: int = DEFAULT_MAX_ORDER, mask_prob: float = 0.15, split: str = "all",
                        val_fraction: Optional[float] = None, seed: int = 0, progress: bool = True,
                        strict: bool = False) -> dict[str, Any]:
    """Evaluate a checkpoint (or run folder) on ``fasta``; writes the report to ``out_dir`` when given.

    ``split`` ``val`` evaluates only the last ``val_fraction`` of each record (default: the
    checkpoint's own ``train_data.val_fraction``, else 0.1), i.e. the part of a training genome
    that training held out; ``train`` the rest; ``all`` every base. ``strict``: characters outside
    IUPAC in ``fasta`` or the baselines' training FASTA are an error (else N, with a warning).

    Returns the report dict (see :func:`evaluate_records`), with ``out_dir`` files listed under ``files``.
    """
    from ... import __version__
    from ...runtime.checkpoint import load_pretrained
    from ..motifs import load_motifs

    threshold = Threshold.parse(threshold)  # fail early on a bad threshold
    if motif_ids and not motif_files:
        raise InputError("--motif-ids given without --motifs FILE; name the motif file(s) to select from")
    motifs = load_motifs(list(motif_files), motif_ids) if motif_files else []
    model, tokenizer, info = load_pretrained(checkpoint)
    if getattr(tokenizer, "kind", None) != "nucleotide":
        raise CheckpointError(f"{info.get('path', checkpoint)}: evaluate needs a nucleotide model, this one uses the "
                              f"{getattr(tokenizer, 'kind', '?')} tokenizer")
    scorer = ModelScorer(model, info.get("objective"), device)
    records = load_genome(fasta, tokenizer, strict=strict)
    if val_fraction is None:
        td = info.get("train_data")
        val_fraction = float(td.get("val_fraction", 0.1)) if isinstance(td, dict) else 0.1
    records = region_records(records, split, val_fraction)
    data, note = baseline_data_from_info(info, train_fasta, strict=strict)
    report: dict[str, Any] = {"seqformer_version": __version__,
                              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                              "fasta": str(fasta), "split": split,
                              "val_fraction": val_fraction if split != "all" else None,
                              "checkpoint": info.get("path", str(checkpoint)),
                              "checkpoint_step": info.get("step"),
                              "checkpoint_val_bits_per_base": info.get("val_bits_per_base"),
                              "device": str(scorer.device)}
    report.update(evaluate_records(records, scorer, motifs, threshold, window or _default_window(info, scorer.max_len),
                                   motif_window, batch_size, mask_prob, data, note, max_order, max_sites,
                                   seed=seed, progress=progress))
    if out_dir is not None:
        report["files"] = {k: str(v) for k, v in write_report(report, out_dir).items()}
    return report
