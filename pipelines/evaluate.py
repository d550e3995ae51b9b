"""``seqformer evaluate``: parse options, call
:func:`reformer_seq.tasks.evaluation.evaluate.evaluate_checkpoint`, print a summary."""
from __future__ import annotations

import click


def _split_ids(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    return [i.strip() for v in value for i in v.split(",") if i.strip()]


@click.command()
@click.argument("fasta", nargs=-1, required=True, type=click.Path())
@click.option("--checkpoint", required=True, type=click.Path(),
              help="A `seqformer pretrain` run folder (uses its best checkpoint), a checkpoints/step-* folder, "
                   "or a shipped model: ecoli, human.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Report folder: report.json, report.md and profiles/*.png (created if missing).")
@click.option("--motifs", "motif_files", multiple=True, type=click.Path(dir_okay=False),
              help="Motif file: JASPAR (.jaspar), MEME (.meme), TRANSFAC (.transfac/.dat) or PFM; "
                   "repeat for several. Without it only the likelihood is evaluated.")
@click.option("--motif-ids", multiple=True, callback=_split_ids, metavar="ID[,ID...]",
              help="Evaluate only these motifs: matrix ids with or without version (MA0139.2, MA0139) or names "
                   "(CTCF) [default: every motif in the files].")
@click.option("--threshold", default="p:1e-5", show_default=True,
              help="Motif site threshold: p:P (p-value of the score under the FASTA's background), rel:R "
                   "(share of the PSSM's score range, 0-1) or a number (log2-odds bits).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Windows per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--window", type=int, default=None,
              help="Bases per likelihood window [default: the training seq_len, at most the model's max_seq_len].")
@click.option("--motif-window", type=int, default=512, show_default=True,
              help="Bases of context scored around each motif site and control.")
@click.option("--max-sites", type=int, default=1000, show_default=True,
              help="Most sites evaluated per motif (a seeded random subset beyond; 0 = all).")
@click.option("--train-fasta", type=click.Path(dir_okay=False), default=None,
              help="Fit the Markov and gene HMM baselines on this FASTA or GenBank file (train region = all but "
                   "its last 10%%) instead of the training data named in the checkpoint.")
@click.option("--split", type=click.Choice(["all", "val", "train"]), default="all", show_default=True,
              help="val: only the last part of each record that training held out (the checkpoint's val_fraction); "
                   "train: the rest; all: every base.")
@click.option("--gene-order", type=click.IntRange(2, 8), default=5, show_default=True,
              help="Order of the gene HMM baseline's emissions (fitted on the training data's GenBank CDS, or on "
                   "Prodigal's gene calls for a FASTA; a few seconds for a bacterial genome).")
@click.option("--no-gene-hmm", is_flag=True, help="Skip the gene HMM baseline.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of masking, shuffles and control picks.")
@click.option("--strict", is_flag=True,
              help="Characters outside IUPAC are an error naming the record and position (default: read as N, "
                   "with one warning per file giving their count per record).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(fasta, checkpoint, out_dir, motif_files, motif_ids, threshold, batch_size, device, window,
             motif_window, max_sites, train_fasta, split, gene_order, no_gene_hmm, seed, strict, quiet):
    """Evaluate a trained model on FASTA: bits per base against Markov baselines, and motif masking.
    FASTA may be several files, directories (every FASTA/GenBank file below) or @LIST files
    (one path per line); record ids must be unique across them.

    \b
    Likelihood: bits per base (causal models) or masked-token accuracy and bits per masked base
    (masked models) on every A/C/G/T of FASTA, beside an order-0 (composition) and an order-k
    Markov baseline fitted on the checkpoint's training data (k chosen on its validation part)
    and a gene HMM (coding frames on both strands, in-frame stops forbidden; fitted on the
    training data's GenBank CDS or Prodigal's gene calls), scored on the same bases.

    \b
    Motif masking (with --motifs): sites found by each motif's PSSM on both strands are hidden
    (masked models: all site bases masked; causal models: each base scored from its left
    context); top-1 accuracy and bits per base at the sites are compared with GC-matched control
    spans in the same sequences, and the real site against the same window with the site's
    bases shuffled (win rate, one-sided sign-test p-value). A per-position profile (accuracy vs
    information content) is drawn for every motif with sites.

    \b
    Examples:
      # the held-out part of the training genome (its validation region)
      seqformer evaluate data/Ecoli_K12_MG1655.fasta.gz --checkpoint runs/ecoli --split val \\
          --out reports/ecoli
      # CTCF ChIP-seq peaks with the JASPAR CTCF matrix
      seqformer evaluate data/tfbs/Gm12878.CTCF.top500.w200.fa --checkpoint runs/human \\
          --motifs data/motifs/MA0139.2_CTCF.jaspar --out reports/ctcf
      # several motifs from a JASPAR collection, a looser threshold, on a GPU
      seqformer evaluate peaks.fa --checkpoint runs/human --device cuda --batch-size 64 \\
          --motifs ../shared/data/motifs/JASPAR2024_CORE_vertebrates.jaspar \\
          --motif-ids MA0139.2,REST,MA0079 --threshold p:1e-4 --out reports/peaks

    \b
    Output: REPORT_DIR/report.json (n_bases, bits_per_base or masked_accuracy and
    masked_bits_per_base, baselines, motifs[...] with n_sites, site_accuracy,
    control_accuracy, site_bits_per_base, control_bits_per_base, true_vs_shuffled_win_rate,
    p_value, per_position), REPORT_DIR/report.md and REPORT_DIR/profiles/<motif>.png.
    """
    from reformer_seq.tasks.evaluation.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(fasta, checkpoint, out_dir, motif_files=motif_files, motif_ids=motif_ids,
                                 threshold=threshold, batch_size=batch_size, device=device, window=window,
                                 motif_window=motif_window, max_sites=max_sites or None, train_fasta=train_fasta,
                                 split=split, seed=seed, progress=not quiet, strict=strict,
                                 gene_order=None if no_gene_hmm else gene_order)
    click.echo(summary_lines(report))


def summary_lines(report: dict) -> str:
    """A few lines: the likelihood against the baselines, one line per motif, and where the report is."""
    b = report.get("baselines", {})
    if report["objective"] == "causal":
        head = f"{report['n_bases']:,} bases: {report['bits_per_base']:.4f} bits/base, top-1 {report['accuracy']:.3f}"
    else:
        head = (f"{report['n_bases']:,} masked bases: {report['masked_bits_per_base']:.4f} bits/base, "
                f"top-1 {report['masked_accuracy']:.3f}")
    order0 = b.get("order0", {}).get("bits_per_base")
    parts = [f"order 0 {order0:.4f}"] if order0 is not None else []
    if b.get("markov", {}).get("bits_per_base") is not None:
        parts.append(f"Markov order {b['markov']['order']} {b['markov']['bits_per_base']:.4f}")
    if b.get("gene_hmm", {}).get("bits_per_base") is not None:
        parts.append(f"gene HMM order {b['gene_hmm']['order']} {b['gene_hmm']['bits_per_base']:.4f}")
    lines = [head + (f" (baselines: {', '.join(parts)})" if parts else "")]
    if report.get("n_skipped_n"):
        lines.append(f"{report['n_skipped_n']:,} bases skipped as N (gaps and ambiguity codes)")
    for m in report.get("motifs", []):
        if not m["n_evaluated"]:
            note = f" ({m['note']})" if m.get("note") else ""
            lines.append(f"  {m['id']} {m['name']}: {m['n_sites']} sites{note}")
            continue
        ctrl = f"{m['control_accuracy']:.3f}" if m["control_accuracy"] is not None else "n/a"
        lines.append(f"  {m['id']} {m['name']}: {m['n_sites']} sites, accuracy {m['site_accuracy']:.3f} "
                     f"(controls {ctrl}), real > shuffled {m['true_vs_shuffled_win_rate']:.2f} "
                     f"(p = {m['p_value']:.2g})")
    files = report.get("files", {})
    if "report.json" in files:
        lines.append(f"report: {files['report.json']}, {files['report.md']}")
    return "\n".join(lines)
