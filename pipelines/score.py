"""``seqformer score``: parse options, call :func:`reformer_seq.tasks.scoring.tracks.score_fasta`, print a summary."""
from __future__ import annotations

import click


@click.command()
@click.argument("fasta", nargs=-1, required=True, type=click.Path())
@click.option("--checkpoint", required=True, type=click.Path(),
              help="A `seqformer pretrain` run folder (uses its best checkpoint), a checkpoints/step-* folder "
                   "or a shipped model (ecoli, human); "
                   "must be a causal model.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Track file; the suffix picks the format: .bedgraph, .bedgraph.gz, .npz or .bw (needs pyBigWig).")
@click.option("--window", type=int, default=None,
              help="Bases per scoring window [default: the training seq_len, at most the model's max_seq_len].")
@click.option("--overlap", type=int, default=1, show_default=True,
              help="Bases shared by consecutive windows; a window's first OVERLAP bases are context only, so every "
                   "base outside the first window has at least OVERLAP bases of left context (1 = as evaluate).")
@click.option("--rc-average", is_flag=True,
              help="Also score the reverse strand and average, so each base is scored from both sides.")
@click.option("--region", default=None, metavar="CHROM:START-END",
              help="Score only this region (1-based, inclusive, as samtools; CHROM alone = the whole record).")
@click.option("--regions", "regions_bed", type=click.Path(dir_okay=False), default=None,
              help="Score only the regions of this BED file (0-based half-open; overlapping ones merged).")
@click.option("--digits", type=int, default=3, show_default=True,
              help="Decimals kept in bedGraph/bigWig values (runs of equal rounded values are merged).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Windows per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--strict", is_flag=True,
              help="Characters outside IUPAC are an error naming the record and position (default: read as N, "
                   "with one warning per file giving their count per record).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def score(fasta, checkpoint, out, window, overlap, rc_average, region, regions_bed, digits, batch_size, device, strict,
          quiet):
    """Per-base scores along FASTA: bits -log2 p(base | the bases before it).
    FASTA may be several files, directories (every FASTA/GenBank file below) or @LIST files
    (one path per line); record ids must be unique across them.

    \b
    High values mark sequence the model finds surprising, low values sequence it predicts
    well (repeats, conserved motifs it has learnt). Windows are stitched as in `seqformer
    evaluate`, so the mean of the track over a record equals evaluate's bits/base with the
    same --window. N and other non-ACGT bases, and each sequence's first base, get no value.
    Regions are scored as stand-alone sequences (context starts at the region's start).

    \b
    Examples:
      seqformer score data/phiX174_NC_001422.1.fa --checkpoint runs/ecoli --out phix.bedgraph
      seqformer score data/Ecoli_K12_MG1655.fasta.gz --checkpoint runs/ecoli --rc-average \\
          --region K-12-MG1655:4100001-4120000 --out lac.bedgraph.gz
      seqformer score genome.fa --checkpoint runs/ecoli --regions genes.bed --out genes.npz

    \b
    Output: bedGraph (0-based half-open, chrom = record id, a track line), npz (one float32
    array per record, NaN where unscored: np.load(OUT)[record_id]) or bigWig.
    """
    from reformer_seq.tasks.scoring.tracks import score_fasta

    s = score_fasta(fasta, checkpoint, out, window=window, overlap=overlap, rc_average=rc_average, region=region,
                    regions_bed=regions_bed, batch_size=batch_size, device=device, digits=digits,
                    progress=not quiet, strict=strict)
    click.echo(f"{s.n_scored:,} bases scored in {s.n_records} record{'s' if s.n_records != 1 else ''}: mean "
               f"{s.mean_bits:.4f} bits/base (window {s.window}, overlap {s.overlap}"
               f"{', both strands' if s.rc_average else ''}"
               f"{f'; {s.n_skipped_n:,} bases skipped as N' if s.n_skipped_n else ''}) -> {s.out}")
