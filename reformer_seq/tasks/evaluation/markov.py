"""Markov-chain baselines for bits per base: base composition and an order-k chain.

**Baselines** (:func:`markov_baselines`) on exactly the bases a model was scored on (see
:mod:`~reformer_seq.tasks.evaluation.likelihood`): base composition (order 0) and an order-k Markov
chain with add-0.5 smoothing, both fitted on the checkpoint's training data (``info["train_data"]``:
the train region of each record, i.e. all but its last ``val_fraction``) with k chosen (0..12) by
bits per base on the validation region. A base whose left context is shorter than k (record start,
next to an N) uses the longest order its context allows. Counting is vectorised (``np.bincount`` /
``np.unique`` on 2-bit k-mer codes): E. coli takes about a second per order. Tables up to order
the execution policy's ``markov_dense_max_cells`` (4^(k+1) counts; order 10 by default) are
dense arrays, higher orders sorted sparse keys.
:func:`markov_holdout_table` reproduces the reference figure (order 6, first 90% of E. coli ->
1.934 bits per base on the last 10%).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from ...runtime.policy import current_policy
from ...errors import InputError
from ...genome.encoded import EncodedRecord, load_genome
from ...genome.tokenizers import A_ID
from .likelihood import expected_top1, is_base
from ...types import PathLike

DEFAULT_MAX_ORDER = 12


@dataclass(init=False)
class Segment:
    """Region ``[lo, hi)`` of a record's token ids ``ids`` (context before ``lo`` may be used when
    scoring); ``hi`` defaults to the end."""

    ids: np.ndarray
    lo: int
    hi: int

    def __init__(self, ids: np.ndarray, lo: int = 0, hi: Optional[int] = None) -> None:
        self.ids, self.lo, self.hi = ids, lo, len(ids) if hi is None else hi


def _bases_and_runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-bit base codes (L,) int64 (0 where not a base) and the run of consecutive bases just before each position."""
    ids = np.asarray(ids)
    valid = is_base(ids)
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
        assert self.keys is not None and self.counts is not None  # the sparse form
        if not len(self.keys):
            return np.zeros((len(ctx), 4), np.int64)
        order = np.argsort(ctx, kind="stable")  # sorted needles make the search cache-friendly
        i = np.empty(len(ctx), np.int64)
        i[order] = np.searchsorted(self.keys, ctx[order])
        i = np.minimum(i, len(self.keys) - 1)
        return np.where((self.keys[i] == ctx)[:, None], self.counts[i], 0)


def _count(codes: np.ndarray, order: int) -> _Table:
    if 4 ** (order + 1) <= current_policy().markov_dense_max_cells:
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
    def fit(cls, segments: Sequence[Segment], order: int, pseudocount: float = 0.5) -> MarkovModel:
        """Count every (r+1)-mer, r = 0..order, lying wholly inside a segment's ``[lo, hi)``."""
        if not 0 <= order <= 30:
            raise InputError(f"Markov order must be in 0..30, got {order}")
        per_order: list[list[np.ndarray]] = [[] for _ in range(order + 1)]
        n = 0
        for seg in segments:
            ids = np.asarray(seg.ids[seg.lo:seg.hi])
            b, run = _bases_and_runs(ids)
            valid = is_base(ids)
            n += int(valid.sum())
            code = b.copy()  # code[t] = the (r+1)-mer ending at t, built up one order at a time
            for r in range(order + 1):
                if r:
                    code[r:] += b[:-r] << (2 * r) if len(b) > r else 0
                per_order[r].append(code[valid & (run >= r)])
        tables = [_count(np.concatenate(c) if c else np.zeros(0, np.int64), r) for r, c in enumerate(per_order)]
        return cls(order, pseudocount, tables, n)

    def truncated(self, order: int) -> MarkovModel:
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
            pos = np.flatnonzero(is_base(np.asarray(seg.ids[seg.lo:seg.hi]))) + seg.lo
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
    record_paths: list[Path] = field(default_factory=list)  # the file and id of each train segment's record
    record_ids: list[str] = field(default_factory=list)  # (the gene HMM finds their annotation)


def bundled_if_moved(path: Path, shas: Optional[list], i: int) -> Path:
    """``path``, or the file of the same name shipped in seqformer's ``data/`` when ``path`` is gone
    and the shipped file has the recorded checksum (a shipped model names the machine it was
    trained on)."""
    if path.exists() or not shas or i >= len(shas):
        return path
    from ...genome.encoded import file_sha256
    from ...runtime.resources import resource

    try:
        bundled = resource("data", path.name)
    except Exception:
        return path
    return bundled if file_sha256(bundled) == shas[i] else path


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
    paths = [bundled_if_moved(p, (td or {}).get("sha256"), i) if train_fasta is None else p
             for i, p in enumerate(paths)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        return None, f"training FASTA not found: {', '.join(missing)}; pass --train-fasta"
    source = ", ".join(str(p) for p in paths) + f" (train region; its last {vf:g} chooses k)"
    shas = td.get("sha256") if train_fasta is None and isinstance(td, dict) else None
    if shas and len(shas) == len(paths):
        from ...genome.encoded import file_sha256

        changed = [str(p) for p, h in zip(paths, shas) if file_sha256(p) != h]
        if changed:
            source += f" [warning: {', '.join(changed)} changed since training]"
    per_file = [(p, r) for p in paths for r in load_genome(p, strict=strict)]
    train, val = split_segments([r for _, r in per_file], vf)
    return BaselineData(train, val, source, False, [p for p, _ in per_file], [r.id for _, r in per_file]), None


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

    def on_scored(model: MarkovModel) -> dict[str, Optional[float]]:
        bits, corr, n = 0.0, 0.0, 0
        for rec, mask in zip(records, scored):
            pos = np.flatnonzero(mask)
            if pos.size:
                lp, c = model.score(rec.ids, pos)
                bits -= float(lp.sum())
                corr += float(c.sum())
                n += pos.size
        return {"bits_per_base": bits / n if n else None, "accuracy": corr / n if n else None, "n_bases": n}

    out: dict[str, dict[str, Any]] = {
        "order0": {**on_scored(full.truncated(0)), "fitted_on": data.source, "pseudocount": pseudocount},
        "markov": {"order": best, **on_scored(full.truncated(best)), "fitted_on": data.source,
                   "pseudocount": pseudocount,
                   "val_bits_per_base_by_order": {str(k): round(v, 5) for k, v in val_bits.items()}}}
    if data.in_sample:
        for v in out.values():
            v["in_sample"] = True
    return out
