"""``seqformer finetune``: parse options, call :func:`reformer_seq.tasks.finetune.train.finetune`, report one line."""
from __future__ import annotations

import sys

import click


@click.command()
@click.argument("tsv", required=False, type=click.Path(dir_okay=False))
@click.option("--checkpoint", type=click.Path(),
              help="The pretrained model: a `seqformer pretrain` run folder, a checkpoints/step-* folder, or a "
                   "shipped model (ecoli, human).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder for checkpoints and metrics.")
@click.option("--fasta", type=click.Path(dir_okay=False),
              help="FASTA/GenBank holding the records named in the TSV's `id` column.")
@click.option("--class", "classes", multiple=True, metavar="NAME=FILE",
              help="Labelled FASTA: every record of FILE has class NAME (repeat, once per class).")
@click.option("--val", type=click.Path(dir_okay=False), help="Validation TSV (same columns) instead of --val-fraction.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Random share of the input held out for validation (per class).")
@click.option("--task", type=click.Choice(["classify", "regress"]), help="[default: inferred from the labels]")
@click.option("--pool", type=click.Choice(["mean", "attention"]), default="attention", show_default=True,
              help="How the head pools the positions: their mean, or a learned weighting (starts as the mean).")
@click.option("--hidden", type=int, default=0, show_default=True, help="0: linear head; N: MLP with N hidden units.")
@click.option("--layer", type=int, help="Backbone layer the head reads (0 = embeddings) [default: the last].")
@click.option("--freeze", default="none", show_default=True,
              help="all: train the head only; none: train everything; N: the head and the top N blocks.")
@click.option("--lr", type=float, default=3e-3, show_default=True, help="Head learning rate (constant after warmup).")
@click.option("--backbone-lr-scale", type=float, default=0.1, show_default=True,
              help="The backbone's learning rate is --lr times this.")
@click.option("--head-steps", type=int, default=0, show_default=True,
              help="Train the head alone for this many steps first.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-steps", type=int, default=2000, show_default=True)
@click.option("--max-time", type=float, help="Stop after this many seconds of training.")
@click.option("--eval-every", type=int, default=50, show_default=True, help="Steps between validations/checkpoints.")
@click.option("--patience", type=int, default=5, show_default=True,
              help="Stop after this many validations without improvement.")
@click.option("--metric", type=click.Choice(["auroc", "accuracy", "pearson", "mse"]),
              help="Validation metric [default: auroc for 2 classes, accuracy for more, pearson for regression].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint, exactly.")
@click.option("--strict", is_flag=True,
              help="Characters outside IUPAC are an error naming the record and position (default: read as N).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def finetune(tsv, checkpoint, out, fasta, classes, val, val_fraction, task, pool, hidden, layer, freeze, lr,
             backbone_lr_scale, head_steps, batch_size, max_steps, max_time, eval_every, patience, metric, seed, device,
             precision, resume, strict, quiet):
    """Fine-tune a pretrained model to classify sequences or predict a number for each.

    Labelled input: a TSV with a header and columns `sequence` (bases) and `label`, or `id` (a
    record of --fasta) and `label`; or labelled FASTA files, one --class NAME=FILE per class.
    Labels that are not numbers (or a few integers like 0/1) mean classification, other numbers
    regression. The best checkpoint (by the validation metric) is OUT/best.json's folder; score
    new sequences with `seqformer predict`.

    \b
    Examples:
      seqformer finetune --checkpoint runs/ecoli --class ctcf=data/tfbs/Gm12878.CTCF.top500.w200.fa \\
          --class shuffled=shuffled.fa --out runs/ctcf --max-time 120
      seqformer finetune labels.tsv --checkpoint runs/ecoli --out runs/expr --task regress --freeze all
      seqformer finetune ids.tsv --fasta genes.fa --checkpoint runs/ecoli --out runs/genes --pool mean --hidden 64
      seqformer finetune --out runs/ctcf --resume --max-steps 4000
    """
    from reformer_seq.tasks.finetune.train import FinetuneOptions, finetune as run_finetune

    opts = FinetuneOptions(task=task, pool=pool, hidden=hidden, layer=layer, freeze=freeze, lr=lr,
                           backbone_lr_scale=backbone_lr_scale, head_steps=head_steps,
                           batch_size=batch_size, max_steps=max_steps, max_time=max_time, eval_every=eval_every,
                           patience=patience, metric=metric, val_fraction=val_fraction, seed=seed, device=device,
                           precision=precision)
    inputs = {"tsv": tsv, "fasta": fasta, "classes": list(classes), "val": val, "strict": strict}
    result = run_finetune(inputs, checkpoint, out, opts, resume=resume, progress=not quiet, echo=click.echo)
    click.echo(result.line())
    if result.signal is not None:
        click.echo(f"stopped by signal {result.signal}; continue with: seqformer finetune --out {out} --resume",
                   err=True)
        sys.exit(128 + result.signal)
