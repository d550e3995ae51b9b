"""The gene HMM (:mod:`~reformer_seq.tasks.evaluation.gene_hmm`) as a baseline: training genes, scoring, scorer.

**Training genes** (:func:`labelled_training_segments`): the HMM is fitted on the train region of
the checkpoint's training data (:class:`~reformer_seq.tasks.evaluation.markov.BaselineData`, the
first ``1 - val_fraction`` of each record) with the genes of a GenBank file's ``CDS`` features
(:func:`~reformer_seq.genome.annotation.read_cds`) when the training file is an annotated
GenBank file, else with Prodigal's gene calls on the train region itself
(:mod:`~reformer_seq.genome.gene_calls`, trained on that region only): nothing from the held-out
part is seen either way.

**Scoring a long segment** (:func:`segment_scores`): the forward algorithm on windows of the
execution policy's ``gene_hmm_window`` bases, each preceded by ``gene_hmm_burn_in`` bases of
context, ``gene_hmm_batch`` windows at a time. The reading frame is local, so this agrees with
the exact forward over the whole segment to about 1e-5 bits per base (tests/tasks/test_gene_hmm.py),
and E. coli's held-out 464 kb score in a fraction of a second.

**Scorer** (:class:`GeneHMMScorer`): the :class:`~.likelihood.ScoringModel` interface (causal,
natural-log probabilities, -inf for non-base tokens), so variant scoring runs it through exactly
the code the language model goes through.

:func:`gene_hmm_baseline` is the ``baselines.gene_hmm`` entry of ``seqformer evaluate``'s report.
On E. coli K-12 (first 90% -> last 10%) order 2 gives 1.894 and order 5 1.861 bits per base,
fitted on GenBank CDS, against 1.934 for the best Markov chain (benchmarks/gene_baselines.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ...genome.tokenizers import PAD_ID, NucleotideTokenizer
from ...runtime.policy import current_policy
from .gene_hmm import GeneHMM, predictive_logp
from .gene_hmm_fit import LabelledSegment, fit_gene_hmm
from ...genome.tokenizers import A_ID
from .likelihood import LN2, expected_top1, is_base
from .markov import BaselineData, Segment

DEFAULT_GENE_ORDER = 5
GENBANK, PRODIGAL = "GenBank CDS", "pyrodigal calls"


@dataclass
class GeneHMMScorer:
    """A fitted :class:`~.gene_hmm.GeneHMM` as a causal :class:`~.likelihood.ScoringModel`."""

    model: GeneHMM
    objective: str = "causal"
    max_len: int = 1 << 20
    vocab_size: int = NucleotideTokenizer.vocab_size

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        out = np.full(tokens.shape + (self.vocab_size,), -np.inf)
        out[..., list(NucleotideTokenizer.base_ids)] = predictive_logp(self.model, tokens)
        return out


# ---------------------------------------------------------------------- training genes
def _prodigal_segments(segments: Sequence[Segment], ids: Sequence[str]) -> tuple[list[LabelledSegment], str]:
    from ...genome.gene_calls import call_genes, train_gene_finder

    finder, mode = train_gene_finder([s.ids[s.lo:s.hi] for s in segments])
    out = [LabelledSegment(s, call_genes(finder, s.ids[s.lo:s.hi], rid, s.lo)) for s, rid in zip(segments, ids)]
    return out, PRODIGAL + (" (metagenomic mode: under 20 kb to train on)" if mode == "meta" else "")


def _genbank_segments(path: Path, segments: Sequence[Segment], ids: Sequence[str]) -> Optional[list[LabelledSegment]]:
    """The segments with their GenBank CDS; None when ``path`` is not GenBank or has no CDS for them."""
    from ...genome.annotation import read_cds
    from ...genome.fasta import sniff_format

    if sniff_format(path) != "genbank":
        return None
    cds = read_cds(path)
    if not any(cds.get(rid) for rid in ids):
        return None
    return [LabelledSegment(s, cds.get(rid, [])) for s, rid in zip(segments, ids)]


def labelled_training_segments(data: BaselineData) -> tuple[list[LabelledSegment], str]:
    """``data.train`` with genes (GenBank CDS where the file has them, else Prodigal calls) and a description."""
    paths: list[Optional[Path]] = [*data.record_paths] or [None] * len(data.train)
    ids = data.record_ids or [f"record{i}" for i in range(len(data.train))]
    out: list[LabelledSegment] = []
    how: list[str] = []
    for path in dict.fromkeys(paths):  # each file once, in order
        pick = [i for i, p in enumerate(paths) if p == path]
        segs, rids = [data.train[i] for i in pick], [ids[i] for i in pick]
        got = _genbank_segments(Path(path), segs, rids) if path is not None else None
        kind = GENBANK
        if got is None:
            got, kind = _prodigal_segments(segs, rids)
        out += got
        how.append(kind)
    return out, " + ".join(dict.fromkeys(how))


def fit_gene_baseline(data: BaselineData, order: int = DEFAULT_GENE_ORDER,
                      labelled: Optional[list[LabelledSegment]] = None, fitted_on: str = ""
                      ) -> tuple[GeneHMM, dict[str, Any]]:
    """The gene HMM fitted on ``data.train`` (genes: ``labelled``, else found here) and what the report says."""
    t0 = time.perf_counter()
    if labelled is None:
        labelled, fitted_on = labelled_training_segments(data)
    model = fit_gene_hmm(labelled, order)
    n_genes = sum(len(x.genes) for x in labelled)
    return model, {"order": order, "n_states": model.n_states, "n_parameters": model.n_parameters,
                   "fitted_on": fitted_on, "n_training_genes": n_genes,
                   "source": data.source.split(" (train region")[0] + " (train region)",
                   "fit_seconds": round(time.perf_counter() - t0, 3)}


# ---------------------------------------------------------------------- scoring
def _window_plan(lo: int, hi: int, window: int, burn_in: int) -> list[tuple[int, int, int]]:
    """``(input start, first target, end)`` of each window; record position 0 has no prediction."""
    return [(max(0, s - burn_in), s, min(s + window, hi)) for s in range(max(lo, 1), hi, window)]


def segment_scores(model: GeneHMM, ids: np.ndarray, lo: int = 0, hi: Optional[int] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(log2 p, top-1 correctness)`` (hi - lo,) of every base of ``ids[lo:hi]`` from its left context
    (NaN at non-bases and at position 0), windowed as the module docstring says."""
    pol = current_policy()
    ids = np.asarray(ids)
    hi = len(ids) if hi is None else hi
    log2p, correct = np.full(hi - lo, np.nan), np.full(hi - lo, np.nan)
    plan = _window_plan(lo, hi, pol.gene_hmm_window, pol.gene_hmm_burn_in)
    for i in range(0, len(plan), pol.gene_hmm_batch):
        part = plan[i:i + pol.gene_hmm_batch]
        x = np.full((len(part), max(e - a for a, _, e in part)), PAD_ID, np.int64)
        for j, (a, _, e) in enumerate(part):
            x[j, :e - a] = ids[a:e]
        out = predictive_logp(model, x)
        for j, (a, s, e) in enumerate(part):
            q = np.arange(s, e)
            q = q[is_base(ids[q])]
            lp, tgt = out[j, q - 1 - a], ids[q].astype(np.int64) - A_ID
            log2p[q - lo] = lp[np.arange(len(q)), tgt] / LN2
            correct[q - lo] = expected_top1(lp, tgt)
    return log2p, correct


def gene_hmm_bits(model: GeneHMM, segments: Sequence[Segment]) -> float:
    """Mean ``-log2 p`` over every scored A/C/G/T of the segments' regions."""
    total, n = 0.0, 0
    for seg in segments:
        lp, _ = segment_scores(model, seg.ids, seg.lo, seg.hi)
        ok = np.isfinite(lp)
        total -= float(lp[ok].sum())
        n += int(ok.sum())
    return total / n if n else float("nan")


def gene_hmm_baseline(records: Sequence[Any], scored: Sequence[np.ndarray], data: BaselineData,
                      order: int = DEFAULT_GENE_ORDER) -> dict[str, Any]:
    """``baselines.gene_hmm`` of the report: fitted on ``data.train``, scored on the ``scored`` (L_r,) masks."""
    t0 = time.perf_counter()
    labelled, fitted_on = labelled_training_segments(data)
    calls = time.perf_counter() - t0
    if not any(x.genes for x in labelled):
        return {"order": order, "fitted_on": fitted_on, "n_training_genes": 0, "bits_per_base": None,
                "note": f"gene HMM skipped: {fitted_on} found no complete gene in the training data"}
    model, out = fit_gene_baseline(data, order, labelled, fitted_on)
    out["gene_calls_seconds"] = round(calls, 3)
    t0 = time.perf_counter()
    bits, corr, n = 0.0, 0.0, 0
    for rec, mask in zip(records, scored):
        where = np.flatnonzero(mask)
        if not where.size:
            continue
        lo, hi = int(where[0]), int(where[-1]) + 1  # the bases before lo are context
        lp, c = segment_scores(model, rec.ids, lo, hi)
        sel = np.asarray(mask[lo:hi], bool) & np.isfinite(lp)
        bits -= float(lp[sel].sum())
        corr += float(c[sel].sum())
        n += int(sel.sum())
    out.update(bits_per_base=bits / n if n else None, accuracy=corr / n if n else None, n_bases=n,
               score_seconds=round(time.perf_counter() - t0, 3))
    if data.in_sample:
        out["in_sample"] = True
    return out
