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

import difflib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ...errors import InputError, SeqformerError
from ...genome.tokenizers import NucleotideTokenizer
from .variant_baselines import check_names, load_baselines, score_extra
from .variant_effects import Job, causal_llr, markov_llr, masked_llr
from ...types import PathLike

DEFAULT_WINDOW = 4096
TOKENIZER = NucleotideTokenizer()
SIGN_NOTE = ("llr = log2 P(sequence with ALT) - log2 P(sequence with REF), in bits; "
             "negative = the ALT allele is less likely than the reference")
NOTES = {  # code (VCF INFO/SEQFORMER_NOTE) -> meaning
    "symbolic": "symbolic or structural allele, not scored",
    "non_acgt": "allele with letters other than A/C/G/T, not scored",
    "ref_mismatch": "REF disagrees with the reference, not scored",
    "alt_equals_ref": "ALT equals REF (no change), not scored",
    "past_end": "REF lies outside the contig, not scored",
    "too_long": "allele longer than a quarter of the window, not scored (raise --window)",
    "masked_snv_only": "a masked model scores SNVs only, not scored",
    "near_end": "near a contig end: scored with the context there is",
}


@dataclass
class Allele:
    """One ALT of one VCF record and its scores (bits; NaN = not scored)."""

    row: int  # the record's index in the VCF
    chrom: str
    pos: int  # 1-based, as in the VCF
    id: str
    ref: str
    alt: str
    llr_forward: float = math.nan
    llr_reverse: float = math.nan
    markov: list[float] = field(default_factory=lambda: [math.nan, math.nan])
    notes: list[tuple[str, str]] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)  # other baselines' [forward, reverse] scores

    @property
    def scored(self) -> bool:
        return not any(code != "near_end" for code, _ in self.notes)

    def llr(self, strands: int) -> float:
        return _mean([self.llr_forward, self.llr_reverse][:strands])

    def llr_markov(self, strands: int) -> float:
        return _mean(self.markov[:strands])

    def llr_extra(self, name: str, strands: int) -> float:
        return _mean(self.extra.get(name, [math.nan, math.nan])[:strands])

    def note_text(self) -> str:
        return "; ".join(text for _, text in self.notes)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if all(math.isfinite(v) for v in values) else math.nan


# ---------------------------------------------------------------------- reading
@contextmanager
def quiet_htslib():
    """Silence htslib's stderr warnings (e.g. contigs missing from a VCF header, which are fine here)."""
    import pysam

    old = pysam.set_verbosity(0)
    try:
        yield
    finally:
        pysam.set_verbosity(old)


def open_vcf(path: PathLike):
    """A pysam ``VariantFile`` (VCF, bgzipped VCF or BCF), or a clear error; use it under :func:`quiet_htslib`."""
    import pysam

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: VCF not found")
    try:
        return pysam.VariantFile(str(path))
    except NotImplementedError:  # htslib reads gzip only through bgzip's blocks
        raise InputError(f"{path}: compressed with plain gzip; recompress it with bgzip "
                         f"(zcat {Path(path).name} | bgzip > calls.vcf.gz) or give it uncompressed") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read it as VCF/BCF ({e}); expected a VCF (plain or bgzipped) "
                         f"or BCF file") from None


def read_vcf(path: PathLike) -> list[Allele]:
    """One :class:`Allele` per ALT of every record, in file order."""
    out: list[Allele] = []
    n_read = 0
    with quiet_htslib(), open_vcf(path) as vf:
        try:
            for row, rec in enumerate(vf):
                for alt in rec.alts or (".",):
                    out.append(Allele(row, rec.chrom, rec.pos, rec.id or ".", rec.ref.upper(), alt.upper()))
                n_read = row + 1
        except (OSError, ValueError, NotImplementedError) as e:  # NotImplementedError: gzip, not bgzip
            raise InputError(f"{path}: {bad_record(path, n_read) or f'bad VCF record #{n_read + 1} ({e})'}") from None
    return out


VCF_FIELDS = ("CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")


def bad_record(path: PathLike, index: int) -> Optional[str]:
    """What is wrong with the ``index``-th (0-based) record of a text VCF, naming its line and field
    (``line 7, field POS: 'x12' is not a position ...``); None when the text looks fine or is BCF."""
    from ...genome.fasta import open_text

    try:
        with open_text(Path(path), errors="replace") as f:
            return _first_problem(f, index)
    except (OSError, EOFError):
        return None


def _first_problem(lines, index: int) -> Optional[str]:
    seen = -1
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip() or line.startswith("#"):
            continue
        seen += 1
        if seen < index:
            continue
        cols = line.split("\t")
        if len(cols) < len(VCF_FIELDS):
            return (f"line {n}: {len(cols)} tab-separated fields, a VCF record needs {len(VCF_FIELDS)} "
                    f"({' '.join(VCF_FIELDS)}); is the line cut short or space-separated?")
        if not cols[1].isdigit() or int(cols[1]) < 1:
            return f"line {n}, field POS: {cols[1][:30]!r} is not a position (a whole number >= 1, 1-based)"
        for name in ("CHROM", "REF", "ALT"):
            if not cols[VCF_FIELDS.index(name)].strip():
                return f"line {n}, field {name}: empty"
        return None
    return None


def check_contigs(alleles: Sequence[Allele], contigs: Sequence[str], vcf: PathLike, reference: PathLike) -> None:
    """One error naming every VCF contig absent from the reference, with its near misses."""
    known = set(contigs)
    missing = sorted({a.chrom for a in alleles} - known)
    if not missing:
        return
    bare = {c.lower().removeprefix("chr"): c for c in contigs}

    def near(c: str) -> str:
        hits = [bare[k] for k in (c.lower().removeprefix("chr"),) if k in bare]
        hits += [h for h in difflib.get_close_matches(c, contigs, n=2, cutoff=0.6) if h not in hits]
        return f"{c} (reference has {' or '.join(hits)})" if hits else c

    shown = ", ".join(list(contigs)[:10]) + (", ..." if len(contigs) > 10 else "")
    raise InputError(f"{vcf}: contigs not in the reference {reference}: {', '.join(near(c) for c in missing[:10])}"
                     f"{', ...' if len(missing) > 10 else ''}; the reference has {shown}. Names must match exactly: "
                     f"rename the VCF's contigs (bcftools annotate --rename-chrs) or use the matching reference")


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
    from .variant_output import output_format, write_variants

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
