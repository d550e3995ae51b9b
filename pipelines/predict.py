"""``seqformer predict``: parse options, call :func:`reformer_seq.tasks.finetune.model.predict_fasta`,
report one line."""
from __future__ import annotations

import click


@click.command()
@click.argument("fasta", type=click.Path(dir_okay=False))
@click.option("--checkpoint", required=True, type=click.Path(),
              help="A `seqformer finetune` run folder (its best checkpoint) or one of its checkpoints/step-* folders.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output TSV, written atomically.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--strict", is_flag=True,
              help="Characters outside IUPAC are an error naming the record and position (default: read as N).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(fasta, checkpoint, out, batch_size, device, precision, strict, quiet):
    """Score every record of a FASTA/GenBank file with a fine-tuned model.

    Writes a TSV with one row per record, in file order: `id`, `length`, then `predicted` and one
    `p_CLASS` probability column per class (classifier), or `value` (regressor).

    Each record is scored in one pass, so it must fit the model's max_seq_len (unlike `embed`,
    predict does not window long records): a longer record is an error that names it; cut such
    records into pieces first (e.g. `seqkit sliding -W LEN -s LEN`).

    \b
    Example:
      seqformer predict peaks.fa --checkpoint runs/ctcf --out preds.tsv
    """
    from reformer_seq.tasks.finetune.model import predict_fasta

    summary = predict_fasta(fasta, checkpoint, out, batch_size=batch_size, device=device, precision=precision,
                            progress=not quiet, strict=strict)
    click.echo(summary.line())
