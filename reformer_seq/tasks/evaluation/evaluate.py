"""Evaluating genome language models: bits per base against Markov baselines, and motif masking.

The orchestration of the evaluation package; each piece lives in its own module:

* :mod:`~reformer_seq.tasks.evaluation.likelihood`: the :class:`~.likelihood.ScoringModel`
  interface, its conventions (only A/C/G/T are targets; bits are ``-log2 p(true base)``; top-1
  accuracy splits ties) and the likelihood over whole records;
* :mod:`~reformer_seq.tasks.evaluation.markov`: the base-composition and order-k Markov baselines,
  scored on exactly the bases the model was scored on;
* :mod:`~reformer_seq.tasks.evaluation.gene_hmm_baseline`: a gene HMM (frame and strand summed over)
  fitted on the training genome's genes (GenBank CDS or Prodigal calls), on the same bases;
* :mod:`~reformer_seq.tasks.evaluation.motif_masking`: site versus GC-matched control accuracy,
  true versus shuffled sites, per-position profiles;
* :mod:`~reformer_seq.tasks.evaluation.report`: ``report.json``, ``report.md`` and the profile PNGs.

:func:`evaluate_records` runs likelihood, baselines and motif masking for any scoring model;
:func:`evaluate_checkpoint` loads a checkpoint and a FASTA, runs it and writes the report
atomically (:func:`~reformer_seq.tasks.evaluation.report.write_report`).
"""
from __future__ import annotations

import datetime as _dt
from typing import Any, Optional, Sequence, Union

from ...errors import CheckpointError, InputError
from ...genome.encoded import EncodedRecord
from ...genome.tokenizers import BASES
from ...genome.inputs import describe_inputs, load_sequences
from ..motifs import DEFAULT_PSEUDOCOUNT, Motif, Threshold, background_from_records
from .likelihood import LikelihoodResult, ModelScorer, ScoringModel, default_window, likelihood
from .gene_hmm_baseline import DEFAULT_GENE_ORDER, gene_hmm_baseline
from .markov import DEFAULT_MAX_ORDER, BaselineData, Segment, baseline_data_from_info, markov_baselines
from .motif_masking import DEFAULT_MAX_SITES, DEFAULT_MOTIF_WINDOW, motif_masking
from .report import write_report
from ...types import PathLike


def evaluate_records(records: Sequence[EncodedRecord], scorer: ScoringModel, motifs: Sequence[Motif] = (),
                     threshold: Union[Threshold, str, float, None] = None, window: Optional[int] = None,
                     motif_window: int = DEFAULT_MOTIF_WINDOW, batch_size: int = 8, mask_prob: float = 0.15,
                     baseline_data: Optional[BaselineData] = None, baseline_note: Optional[str] = None,
                     max_order: int = DEFAULT_MAX_ORDER, max_sites: Optional[int] = DEFAULT_MAX_SITES,
                     pseudocount: float = DEFAULT_PSEUDOCOUNT, seed: int = 0, progress: bool = True,
                     gene_order: Optional[int] = DEFAULT_GENE_ORDER) -> dict[str, Any]:
    """Likelihood, baselines and motif masking for any :class:`~.likelihood.ScoringModel`; returns the report dict.

    Without ``baseline_data`` the order-0 baseline is fitted on ``records`` themselves (in sample,
    marked so) and the Markov and gene HMM baselines are skipped, with ``baseline_note`` saying
    why. ``gene_order`` None: no gene HMM baseline.
    """
    if not records:
        raise InputError("no records to evaluate")
    lk = likelihood(records, scorer, window, batch_size, mask_prob, seed, progress)
    report: dict[str, Any] = {"objective": scorer.objective, "window": lk.window, "n_records": len(records),
                              "n_bases": lk.n_bases, "n_skipped_n": lk.n_skipped_n}
    if scorer.objective == "causal":
        report.update(bits_per_base=lk.bits_per_base, accuracy=lk.accuracy)
    else:
        report.update(masked_accuracy=lk.accuracy, masked_bits_per_base=lk.bits_per_base, mask_prob=mask_prob)
    report["baselines"] = _baselines(records, lk, baseline_data, baseline_note, max_order)
    if baseline_data is not None and gene_order is not None:
        report["baselines"]["gene_hmm"] = gene_hmm_baseline(records, lk.scored, baseline_data, gene_order)
    if motifs:
        bg = background_from_records(records)
        results = motif_masking(records, scorer, motifs, threshold, bg, motif_window, batch_size, max_sites,
                                pseudocount, seed, progress)
        report["motif_settings"] = {"threshold": str(Threshold.parse(threshold)), "pseudocount": pseudocount,
                                    "background": {base: round(float(v), 4) for base, v in zip(BASES, bg)},
                                    "motif_window": int(min(motif_window, scorer.max_len)), "max_sites": max_sites,
                                    "seed": seed}
        report["motifs"] = results
    else:
        report["motifs"] = []
    return report


def _baselines(records: Sequence[EncodedRecord], lk: LikelihoodResult, data: Optional[BaselineData],
               note: Optional[str], max_order: int) -> dict[str, Any]:
    """The Markov baselines on the scored bases; without ``data`` only order 0, in sample, with a note."""
    if data is not None:
        return markov_baselines(records, lk.scored, data, max_order)
    data = BaselineData([Segment(r.ids) for r in records], [], "the evaluated FASTA itself (in sample)", True)
    base = markov_baselines(records, lk.scored, data, max_order=0)
    return {"order0": base["order0"], "note": f"Markov baseline skipped: {note or 'no training data'}"}


def region_records(records: Sequence[EncodedRecord], split: str, val_fraction: float) -> list[EncodedRecord]:
    """Each record cut to its ``split`` region (``train``/``val``/``all``; see
    :func:`~reformer_seq.genome.windows.split_bounds`)."""
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


def evaluate_checkpoint(fasta: PathLike, checkpoint: PathLike, out_dir: Optional[PathLike] = None,
                        motif_files: Sequence[PathLike] = (), motif_ids: Optional[Sequence[str]] = None,
                        threshold: Union[Threshold, str, float, None] = None, batch_size: int = 8,
                        device: str = "auto", window: Optional[int] = None, motif_window: int = DEFAULT_MOTIF_WINDOW,
                        max_sites: Optional[int] = DEFAULT_MAX_SITES, train_fasta: Optional[PathLike] = None,
                        max_order: int = DEFAULT_MAX_ORDER, mask_prob: float = 0.15, split: str = "all",
                        val_fraction: Optional[float] = None, seed: int = 0, progress: bool = True,
                        strict: bool = False, gene_order: Optional[int] = DEFAULT_GENE_ORDER) -> dict[str, Any]:
    """Evaluate a checkpoint (or run folder) on ``fasta``; writes the report to ``out_dir`` when given.

    ``split`` ``val`` evaluates only the last ``val_fraction`` of each record (default: the
    checkpoint's own ``train_data.val_fraction``, else 0.1), i.e. the part of a training genome
    that training held out; ``train`` the rest; ``all`` every base. ``gene_order``: the order of
    the gene HMM baseline's emissions (None: no gene HMM). ``strict``: characters outside
    IUPAC in ``fasta`` or the baselines' training FASTA are an error (else N, with a warning).

    Returns the report dict (see :func:`evaluate_records`), with ``out_dir`` files listed under ``files``.
    """
    threshold = Threshold.parse(threshold)  # fail early on a bad threshold
    motifs = _load_motifs(motif_files, motif_ids)
    scorer, tokenizer, info = _load_scorer(checkpoint, device)
    records = load_sequences(fasta, tokenizer, strict=strict)
    if val_fraction is None:
        td = info.get("train_data")
        val_fraction = float(td.get("val_fraction", 0.1)) if isinstance(td, dict) else 0.1
    records = region_records(records, split, val_fraction)
    data, note = baseline_data_from_info(info, train_fasta, strict=strict)
    report = _report_header(fasta, checkpoint, info, scorer, split, val_fraction)
    report.update(evaluate_records(records, scorer, motifs, threshold, window or default_window(info, scorer.max_len),
                                   motif_window, batch_size, mask_prob, data, note, max_order, max_sites,
                                   seed=seed, progress=progress, gene_order=gene_order))
    if out_dir is not None:
        report["files"] = {k: str(v) for k, v in write_report(report, out_dir).items()}
    return report


def _load_motifs(motif_files: Sequence[PathLike], motif_ids: Optional[Sequence[str]]) -> list[Motif]:
    """The motifs of ``motif_files`` (those named by ``motif_ids`` when given); none without files."""
    from ..motifs import load_motifs

    if motif_ids and not motif_files:
        raise InputError("--motif-ids given without --motifs FILE; name the motif file(s) to select from")
    return load_motifs(list(motif_files), motif_ids) if motif_files else []


def _load_scorer(checkpoint: PathLike, device: str) -> tuple[ModelScorer, Any, dict]:
    """``(scorer, tokenizer, info)`` of a nucleotide checkpoint on ``device``."""
    from ..pretrained import load_pretrained

    model, tokenizer, info = load_pretrained(checkpoint)
    if getattr(tokenizer, "kind", None) != "nucleotide":
        raise CheckpointError(f"{info.get('path', checkpoint)}: evaluate needs a nucleotide model, this one uses the "
                              f"{getattr(tokenizer, 'kind', '?')} tokenizer")
    return ModelScorer(model, info.get("objective"), device), tokenizer, info


def _report_header(fasta: PathLike, checkpoint: PathLike, info: dict, scorer: ModelScorer, split: str,
                   val_fraction: float) -> dict[str, Any]:
    """The report's provenance: version, time, inputs, split and device."""
    from ...version import __version__

    return {"seqformer_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "fasta": describe_inputs(fasta), "split": split,
            "val_fraction": val_fraction if split != "all" else None,
            "checkpoint": info.get("path", str(checkpoint)),
            "checkpoint_step": info.get("step"),
            "checkpoint_val_bits_per_base": info.get("val_bits_per_base"),
            "device": str(scorer.device)}
