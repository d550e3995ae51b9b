"""``seqformer embed``: parse options, call :func:`reformer_seq.tasks.embedding.embed_fasta`, report one line."""
from __future__ import annotations

import click


@click.command()
@click.argument("fasta", nargs=-1, required=True, type=click.Path())
@click.option("--checkpoint", required=True, type=click.Path(),
              help="A `seqformer pretrain` run folder (uses its best checkpoint), a checkpoints/step-* folder, "
                   "or a shipped model: ecoli, human.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output file: .npz (numpy) or .h5 (HDF5); written atomically.")
@click.option("--pool", type=click.Choice(["mean", "max", "none"]), default="mean", show_default=True,
              help="mean / max: one vector per record (average / per-feature maximum over its bases, N bases "
                   "left out); none: one vector per base.")
@click.option("--layer", type=int, default=None,
              help="Which block's output: 0 = the input embeddings, 1..depth = block N, -1 = the last "
                   "[default: the last; see docs/studies.md, downstream tasks].")
@click.option("--rc-average", is_flag=True,
              help="Average each sequence with its reverse complement (strand-symmetric embeddings).")
@click.option("--window", type=int, default=None,
              help="Bases per pass; longer records are split into overlapping windows and stitched "
                   "[default: the model's max_seq_len].")
@click.option("--overlap", type=int, default=None,
              help="Minimum overlap of consecutive windows, in bases [default: window / 8].")
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="Most windows per forward pass (short records are batched; long windows run one at a time).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16 runs the model under bfloat16 autocast; outputs are float32 either way.")
@click.option("--format", "fmt", type=click.Choice(["npz", "h5"]), default=None,
              help="Output format [default: from the --out suffix].")
@click.option("--strict", is_flag=True,
              help="Characters outside IUPAC are an error naming the record and position (default: read as N, "
                   "with one warning per file giving their count per record).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed(fasta, checkpoint, out, pool, layer, rc_average, window, overlap, batch_size, device, precision, fmt,
          strict, quiet):
    """Embed the sequences of a FASTA/GenBank file (plain or gzip) with a trained model.
    FASTA may be several files, directories (every FASTA/GenBank file below) or @LIST files
    (one path per line); record ids must be unique across them.

    Writes `ids` (record ids, in file order), `lengths` and `embeddings` float32: (records, dim)
    with --pool mean, or (total bases, dim) with --pool none plus `offsets` (record i is rows
    offsets[i]:offsets[i+1]). Records longer than --window are embedded in overlapping windows;
    each base is taken from the window where it is most central. Read the output with
    numpy.load(path) or h5py.

    \b
    Examples:
      seqformer embed genes.fa --checkpoint runs/ecoli --out genes.npz
      seqformer embed genes.fa --checkpoint runs/ecoli --out genes.npz --rc-average
      seqformer embed genes.fa --checkpoint runs/ecoli --out genes_l1.npz --layer 1 --pool max
      seqformer embed genome.fa.gz --checkpoint runs/ecoli/checkpoints/step-0002000 \\
          --pool none --out per_base.h5          # per-base vectors, written incrementally
      seqformer embed contigs.fa --checkpoint runs/long --window 1048576 --device cuda --precision bf16 \\
          --out contigs.npz

    \b
    Python:
      >>> import numpy as np; z = np.load("genes.npz")
      >>> z["ids"], z["embeddings"].shape
    """
    from reformer_seq.tasks.embedding import embed_fasta

    summary = embed_fasta(fasta, checkpoint, out, pool=pool, rc_average=rc_average, window=window, overlap=overlap,
                          batch_size=batch_size, device=device, precision=precision, format=fmt,
                          progress=not quiet, strict=strict, layer=layer)
    click.echo(summary.line())
