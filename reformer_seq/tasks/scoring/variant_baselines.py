"""Gene-aware baselines for ``score-variants --baseline gene|prodigal`` (issue 27).

Each fills one more column, ``llr_<name>``, per allele and strand, on exactly the windows of the
language model's score (:func:`~reformer_seq.tasks.scoring.variant_effects.variant_window`), and
is averaged over the strands the same way:

* ``gene``: the gene HMM (:mod:`~reformer_seq.tasks.evaluation.gene_hmm`, fitted on the
  checkpoint's training data as ``seqformer evaluate`` fits it) run through
  :func:`~reformer_seq.tasks.scoring.variant_effects.causal_llr` itself as a causal scoring
  model: ``sum_{t >= p} log2 P_alt(x_t | x_<t) - sum_{t >= p} log2 P_ref(x_t | x_<t)``, bits;
* ``prodigal``: the change in Prodigal's summed gene score over the window (genes called in the
  ALT window minus those in the REF window, Prodigal trained on the training data's train region),
  in Prodigal's score units (not bits): negative = the ALT allele weakens the genes there.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ...errors import SeqformerError
from .variant_effects import Job, alt_window, causal_llr, variant_window

BASELINES = ("markov", "gene", "prodigal")


@dataclass
class ExtraBaseline:
    """One extra score: ``score(jobs, seqs, window)`` fills ``job.llr`` of every job."""

    name: str  # the column is llr_<name>, the VCF field SEQFORMER_LLR_<NAME>
    description: str  # one line for the output's header
    score: Callable[[Sequence[Job], Sequence[Sequence[np.ndarray]], int], None]


def _training_data(info: dict, train_fasta: Optional[Any], flag: str):
    from ..evaluation.markov import baseline_data_from_info

    data, note = baseline_data_from_info(info, train_fasta)
    if data is None:
        raise SeqformerError(f"--baseline {flag}: {note}")
    return data


def gene_baseline(info: dict, train_fasta: Optional[Any] = None, order: int = 5) -> ExtraBaseline:
    """The gene HMM fitted on the checkpoint's training data (or ``train_fasta``), as a causal scorer."""
    from ...runtime.policy import current_policy
    from ..evaluation.gene_hmm_baseline import GeneHMMScorer, fit_gene_baseline

    model, fit = fit_gene_baseline(_training_data(info, train_fasta, "gene"), order)
    scorer = GeneHMMScorer(model)

    def score(jobs: Sequence[Job], seqs: Sequence[Sequence[np.ndarray]], window: int) -> None:
        causal_llr(jobs, seqs, scorer, window, batch_size=current_policy().gene_hmm_batch)

    return ExtraBaseline("gene", f"llr_gene: the same score from the {fit['n_states']}-state order-{order} gene HMM "
                                 f"fitted on {fit['fitted_on']} of the checkpoint's training data", score)


def prodigal_baseline(info: dict, train_fasta: Optional[Any] = None) -> ExtraBaseline:
    """Prodigal trained on the checkpoint's training data: the ALT - REF change in summed gene score."""
    from ...genome.gene_calls import train_gene_finder, window_gene_score

    data = _training_data(info, train_fasta, "prodigal")
    finder, mode = train_gene_finder([s.ids[s.lo:s.hi] for s in data.train])
    ref_cache: dict[tuple, float] = {}

    def score(jobs: Sequence[Job], seqs: Sequence[Sequence[np.ndarray]], window: int) -> None:
        for j in jobs:
            seq = seqs[j.chrom][j.strand]
            lo, hi = variant_window(len(seq), j.p, window)
            key = (j.chrom, j.strand, lo, hi)
            if key not in ref_cache:
                ref_cache[key] = window_gene_score(finder, seq[lo:hi])
            j.llr = window_gene_score(finder, alt_window(seq, lo, hi, j)) - ref_cache[key]

    return ExtraBaseline("prodigal", f"llr_prodigal: ALT minus REF in Prodigal's summed gene score over the window "
                                     f"(score units, not bits; Prodigal {mode} mode, trained on the checkpoint's "
                                     f"training data)", score)


def check_names(names: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise SeqformerError(f"--baseline must be one of {', '.join(BASELINES)}, got {', '.join(unknown)}")


def load_baselines(names: Sequence[str], info: dict, train_fasta: Optional[Any] = None) -> list[ExtraBaseline]:
    """The extra baselines named (``gene``, ``prodigal``; ``markov`` is handled by the caller)."""
    check_names(names)
    makers = {"gene": gene_baseline, "prodigal": prodigal_baseline}
    return [makers[n](info, train_fasta) for n in dict.fromkeys(names) if n in makers]


def score_extra(baselines: Sequence[ExtraBaseline], alleles: Sequence[Any], jobs: Sequence[Job],
                seqs: Sequence[Sequence[np.ndarray]], window: int) -> None:
    """Fill ``alleles[j.key].extra[name][strand]`` for every baseline and job (on copies of the jobs)."""
    for b in baselines:
        copies = [dataclasses.replace(j, llr=math.nan) for j in jobs]
        b.score(copies, seqs, window)
        for j in copies:
            alleles[j.key].extra.setdefault(b.name, [math.nan, math.nan])[j.strand] = j.llr
