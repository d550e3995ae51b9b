"""``seqformer score-variants``: zero-shot effect scores for the variants of a VCF/BCF.

The VCF is read with pysam (htslib: plain, bgzipped or BCF, any header), the reference through
:func:`~reformer_seq.genome.encoded.load_genome` (FASTA or GenBank, gzip). Contig names must match
exactly; contigs the reference lacks are reported in one error with their near misses.

Every ALT of every record becomes one :class:`Allele` (one output row per ALT). Alleles are
scored as described in :mod:`reformer_seq.tasks.scoring.variant_effects` (bits, ``log2 P(ALT) - log2 P(REF)``;
negative = the ALT allele is less likely than the reference), on the forward strand and, with
``strand="both"`` (default), on the reverse strand too: ``llr`` is then the mean of
``llr_forward`` and ``llr_reverse``. Alleles that are not scored keep their row with ``llr`` NA
and the reason in ``note``: symbolic or structural alleles (``<DEL>``, breakends, ``*``),
non-ACGT letters, a REF that disagrees with the reference (never scored silently), an ALT
equal to its REF (no change: a no-op, usually a bug upstream), alleles
longer than a quarter of the window, non-SNVs with a masked model. Variants within a quarter
window of a contig end are scored with the context there is and flagged.

Outputs (by suffix, written atomically): ``.tsv`` (``chrom pos id ref alt llr llr_forward
llr_reverse note`` [``llr_markov`` ``llr_gene`` ``llr_prodigal``, see
:mod:`~reformer_seq.tasks.scoring.variant_baselines`], pos 1-based as in the VCF; the header is
line 1, what the scores mean is in the JSON sidecar ``OUT.json``), or ``.vcf`` / ``.vcf.gz`` (the
input with ``INFO/SEQFORMER_LLR`` and friends, Number=A, documented in the header).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from ...errors import SeqformerError
from ...genome.tokenizers import NucleotideTokenizer
from .variant_baselines import check_names, load_baselines, score_extra
from .variant_effects import Job, causal_llr, markov_llr, masked_llr
from ...types import PathLike
from .variant_output import output_format, write_variants
from .vcf_input import Allele, check_contigs, read_vcf

DEFAULT_WINDOW = 4096
TOKENIZER = NucleotideTokenizer()


# ---------------------------------------------------------------------- checks
def classify(a: Allele, seq: np.ndarray, window: int, masked: bool, max_len: int) -> None:
    """Append the notes of ``a`` (reasons not to score it, or the contig-end flag)."""
    alt = a.alt
    if alt.startswith("<") or "[" in alt or "]" in alt or alt in ("*", "."):
        a.notes.append(("symbolic", f"symbolic/structural allele {alt}, not scored"))
        return
    if set(a.ref + alt) - set("ACGT"):
        a.notes.append(("non_acgt", "allele with letters other than A/C/G/T, not scored"))
        return
    p, r, L = a.pos - 1, len(a.ref), len(seq)
    if p < 0 or p + r > L:
        a.notes.append(("past_end", f"REF lies outside the contig (1..{L:,}), not scored"))
        return
    have = TOKENIZER.decode(np.asarray(seq[p:p + r]))
    if have.upper() != a.ref:
        a.notes.append(("ref_mismatch", f"REF {a.ref} but the reference has {have} at {a.chrom}:{a.pos}, not scored"))
        return
    if alt == a.ref:
        a.notes.append(("alt_equals_ref", f"ALT equals REF ({alt}) at {a.chrom}:{a.pos}: no change, not scored"))
        return
    if masked and (r != 1 or len(alt) != 1):
        a.notes.append(("masked_snv_only", "the checkpoint is a masked model, which scores SNVs only; not scored"))
        return
    w = min(window, L)
    if max(r, len(alt)) > max(1, w // 4) or (not masked and w - r + len(alt) > max_len):
        a.notes.append(("too_long", f"allele longer than a quarter of the {w}-base window, not scored "
                                    f"(raise --window)"))
        return
    before, after = p, L - p - r
    if min(before, after) < window // 4:
        a.notes.append(("near_end", f"near a contig end ({before:,} bases before, {after:,} after): scored with "
                                    f"the context there is"))


# ---------------------------------------------------------------------- scoring
def make_jobs(alleles: Sequence[Allele], index: dict[str, int], lengths: Sequence[int], strands: int) -> list[Job]:
    """Forward (and reverse) jobs for the scorable alleles; reverse jobs are mirrored and complemented."""
    tok = TOKENIZER
    jobs = []
    for i, a in enumerate(alleles):
        if not a.scored:
            continue
        c, p = index[a.chrom], a.pos - 1
        ref, alt = tok.encode(a.ref), tok.encode(a.alt)
        jobs.append(Job(i, 0, c, p, ref, alt))
        if strands == 2:
            jobs.append(Job(i, 1, c, lengths[c] - p - len(ref), tok.reverse_complement(ref),
                            tok.reverse_complement(alt)))
    return jobs


def strand_sequences(records, reverse_for: set[int]) -> list[list[np.ndarray]]:
    """``seqs[c][strand]``: each contig's token ids and, for contigs in ``reverse_for`` only, their reverse
    complement."""
    return [[r.ids] + ([TOKENIZER.reverse_complement(np.asarray(r.ids))] if i in reverse_for else [])
            for i, r in enumerate(records)]


def score_alleles(alleles: Sequence[Allele], records, scorer, window: int = DEFAULT_WINDOW, strand: str = "both",
                  markov=None, batch_size: int = 8, progress: bool = True, extra: Sequence = ()) -> None:
    """Classify and score ``alleles`` against ``records`` (EncodedRecord, one per contig) in place.

    ``scorer``: a :class:`~reformer_seq.tasks.evaluation.likelihood.ScoringModel`; ``markov``: an optional fitted
    :class:`~reformer_seq.tasks.evaluation.markov.MarkovModel` (its causal score fills ``Allele.markov``);
    ``extra``: :class:`~.variant_baselines.ExtraBaseline` scores, filling ``Allele.extra``.
    """
    from tqdm.auto import tqdm

    if strand not in ("both", "forward"):
        raise SeqformerError(f"strand must be 'both' or 'forward', got {strand!r}")
    strands = 2 if strand == "both" else 1
    window = int(min(window, scorer.max_len))
    if window < 8:
        raise SeqformerError(f"--window must be at least 8 bases, got {window}")
    masked = scorer.objective == "masked"
    index = {r.id: i for i, r in enumerate(records)}
    for a in alleles:
        classify(a, records[index[a.chrom]].ids, window, masked, scorer.max_len)
    jobs = make_jobs(alleles, index, [len(r) for r in records], strands)
    seqs = strand_sequences(records, {j.chrom for j in jobs if j.strand})
    left = {j.key: strands for j in jobs}
    bar = tqdm(total=len(left), desc="variants", unit="variant", disable=not progress, dynamic_ncols=True)

    def done(j: Job) -> None:
        a = alleles[j.key]
        if j.strand:
            a.llr_reverse = j.llr
        else:
            a.llr_forward = j.llr
        if markov is not None:
            a.markov[j.strand] = markov_llr(j, seqs[j.chrom][j.strand], markov, window)
        left[j.key] -= 1
        if not left[j.key]:
            bar.update(1)

    (masked_llr if masked else causal_llr)(jobs, seqs, scorer, window, batch_size, done)
    bar.close()
    score_extra(extra, alleles, jobs, seqs, window)


# ---------------------------------------------------------------------- top level
@dataclass
class VariantSummary:
    out: str
    n_records: int
    n_alleles: int
    n_scored: int
    n_flagged_near_end: int
    notes: dict[str, int]
    seconds: float
    window: int
    strand: str
    objective: str
    checkpoint: str


def markov_from_checkpoint(info: dict, train_fasta: Optional[PathLike] = None):
    """The order-k Markov chain fitted on the checkpoint's training data as ``evaluate`` fits it."""
    from ..evaluation.markov import DEFAULT_MAX_ORDER, baseline_data_from_info, fit_markov

    data, note = baseline_data_from_info(info, train_fasta)
    if data is None:
        raise SeqformerError(f"--baseline markov: {note}")
    full, k, _ = fit_markov(data, DEFAULT_MAX_ORDER)
    return full.truncated(k)


def score_vcf(vcf: PathLike, reference: PathLike, checkpoint: PathLike, out: PathLike,
              window: int = DEFAULT_WINDOW, strand: str = "both", baseline: Union[str, Sequence[str], None] = None,
              train_fasta: Optional[PathLike] = None, batch_size: int = 8, device: str = "auto",
              progress: bool = True, strict: bool = False) -> VariantSummary:
    """Score every ALT of ``vcf`` against ``reference`` with a checkpoint and write ``out``;
    ``baseline``: ``markov``, ``gene``, ``prodigal`` or several of them (``strict``: characters
    outside IUPAC in ``reference`` are an error, else N with a warning)."""
    from ..pretrained import load_pretrained
    from ..evaluation.likelihood import ModelScorer
    from ...genome.encoded import load_genome

    t0 = time.perf_counter()
    fmt = output_format(out)
    names = [baseline] if isinstance(baseline, str) else list(baseline or ())
    check_names(names)
    model, tokenizer, info = load_pretrained(checkpoint)
    if getattr(tokenizer, "kind", None) != "nucleotide":
        raise SeqformerError(f"{info['path']}: score-variants needs a nucleotide model")
    scorer = ModelScorer(model, info.get("objective"), device)
    records = load_genome(reference, tokenizer, strict=strict)
    alleles = read_vcf(vcf)
    check_contigs(alleles, [r.id for r in records], vcf, reference)
    markov = markov_from_checkpoint(info, train_fasta) if "markov" in names else None
    extra = load_baselines(names, info, train_fasta)
    score_alleles(alleles, records, scorer, window, strand, markov, batch_size, progress, extra)
    window = int(min(window, scorer.max_len))
    meta = {"checkpoint": info["path"], "objective": scorer.objective, "window": window, "strand": strand,
            "markov_order": markov.order if markov is not None else None,
            "baselines": "+".join(b.name for b in extra) or None, "_extra": [(b.name, b.description) for b in extra]}
    write_variants(alleles, out, fmt, vcf, records, meta)
    notes: dict[str, int] = {}
    for a in alleles:
        for code, _ in a.notes:
            notes[code] = notes.get(code, 0) + 1
    return VariantSummary(str(out), len({a.row for a in alleles}), len(alleles), sum(a.scored for a in alleles),
                          notes.get("near_end", 0), notes, time.perf_counter() - t0, window, strand,
                          scorer.objective, info["path"])
