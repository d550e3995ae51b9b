"""``seqformer score-variants``: parse options, call :func:`reformer_seq.tasks.scoring.variants.score_vcf`,
print a summary."""
from __future__ import annotations

import click


@click.command("score-variants")
@click.argument("vcf", type=click.Path(dir_okay=False))
@click.option("--reference", required=True, type=click.Path(dir_okay=False),
              help="The reference the VCF was called against: FASTA or GenBank, plain or gzip. Contig names must "
                   "match the VCF's exactly.")
@click.option("--checkpoint", required=True, type=click.Path(),
              help="A `seqformer pretrain` run folder (uses its best checkpoint), a checkpoints/step-* folder, "
                   "or a shipped model: ecoli, human.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output; the suffix picks the format: .tsv, .vcf or .vcf.gz (the input with INFO/SEQFORMER_LLR).")
@click.option("--window", type=int, default=4096, show_default=True,
              help="Bases of reference around each variant (at most the model's max_seq_len); the variant sits in "
                   "the middle half, and variants in one window share its reference pass.")
@click.option("--strand", type=click.Choice(["both", "forward"]), default="both", show_default=True,
              help="both: also score the reverse-complemented window and report the mean of the two strands.")
@click.option("--baseline", type=click.Choice(["markov", "gene", "prodigal"]), multiple=True,
              help="Add a baseline column (repeat for several), fitted on the checkpoint's training data as "
                   "`seqformer evaluate` fits it: markov -> llr_markov (the order-k Markov chain), gene -> llr_gene "
                   "(the gene HMM, same windows and sum), prodigal -> llr_prodigal (ALT - REF change in Prodigal's "
                   "summed gene score over the window).")
@click.option("--train-fasta", type=click.Path(dir_okay=False), default=None,
              help="With --baseline: fit the baselines on this FASTA or GenBank file instead of the training data "
                   "the checkpoint names.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Windows per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--strict", is_flag=True,
              help="Characters outside IUPAC are an error naming the record and position (default: read as N, "
                   "with one warning per file giving their count per record).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def score_variants(vcf, reference, checkpoint, out, window, strand, baseline, train_fasta, batch_size, device,
                   strict, quiet):
    """Zero-shot effect scores for the variants of VCF (VCF, VCF.gz or BCF).

    \b
    Causal models: llr = log2 P(window with ALT) - log2 P(window with REF), in bits, summed
    over the bases from the variant to the end of a window of --window reference bases
    around it (the bases before it cancel exactly). SNVs, MNVs, insertions and deletions:
    both alleles are followed by the same downstream reference bases. Masked models:
    log2 p(ALT) - log2 p(REF) at the masked variant position (SNVs only).
    NEGATIVE = the ALT allele is LESS likely than the reference (e.g. damaging).

    \b
    One row per ALT. Not scored (llr NA, reason in note): symbolic/structural alleles
    (<DEL>, breakends, *), non-ACGT letters, a REF that disagrees with the reference, an ALT
    equal to its REF (a no-op), alleles longer than a quarter of the window. Variants near
    a contig end are scored with the context there is and flagged.

    \b
    Examples:
      seqformer score-variants data/variants/ecoli_example.vcf --reference data/Ecoli_K12_MG1655.fasta.gz \\
          --checkpoint runs/ecoli --out ecoli_example.tsv
      seqformer score-variants calls.vcf.gz --reference genome.fa.gz --checkpoint runs/ecoli \\
          --baseline markov --baseline gene --out scored.vcf.gz

    \b
    Output: TSV (chrom pos id ref alt llr llr_forward llr_reverse note [llr_markov llr_gene
    llr_prodigal]; pos 1-based as in the VCF; the column header is line 1, what the scores mean
    is in OUT.json beside it) or VCF with INFO/SEQFORMER_LLR, _LLR_FWD, _LLR_REV, _NOTE (and
    _LLR_MARKOV, _LLR_GENE, _LLR_PRODIGAL), Number=A.
    """
    from reformer_seq.tasks.scoring.variants import score_vcf

    s = score_vcf(vcf, reference, checkpoint, out, window=window, strand=strand, baseline=baseline,
                  train_fasta=train_fasta, batch_size=batch_size, device=device, progress=not quiet,
                  strict=strict)
    other = {k: v for k, v in s.notes.items() if k != "near_end"}
    click.echo(f"{s.n_scored:,} of {s.n_alleles:,} alleles scored ({s.n_records:,} records; {s.objective} model, "
               f"window {s.window}, strand {s.strand}) in {s.seconds:.1f} s -> {s.out}")
    if other or s.n_flagged_near_end:
        click.echo("notes: " + ", ".join(f"{k} {v}" for k, v in sorted(s.notes.items())))
