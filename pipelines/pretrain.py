"""``seqformer pretrain``: parse options, call :func:`reformer_seq.tasks.training.pretrain`, report."""
from __future__ import annotations

import sys
import time

import click

from reformer_seq.config import load_run_config
from reformer_seq.runtime.resources import resource


@click.command()
@click.argument("fasta", nargs=-1, type=click.Path())
@click.option("--fasta-list", type=click.Path(dir_okay=False), multiple=True,
              help="A file of FASTA/GenBank paths, one per line (# comments; relative to the list's folder); "
                   "the same as @FILE. Directories given as FASTA take every sequence file below them.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              default=lambda: str(resource("configs", "default.yaml")),
              show_default="configs/default.yaml", help="YAML run config (sections model:, data:, train:).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder for checkpoints, metrics and plots [default: runs/pretrain-DATE-TIME].")
@click.option("--max-steps", type=int, help="Optimizer steps to train for.")
@click.option("--max-time", type=float,
              help="Stop (and checkpoint) after this many seconds of training; 0 = no time budget (the config's "
                   "max_time is dropped and --max-steps alone sets the schedule).")
@click.option("--batch-size", type=int, help="Windows per step (per process).")
@click.option("--grad-accum", type=int, help="Micro-batches per optimizer step.")
@click.option("--seq-len", type=int, help="Window length in bases (at most the model's max_seq_len).")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--objective", type=click.Choice(["causal", "masked"]),
              help="causal: next base (bits per base); masked: masked-LM (makes the model bidirectional).")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="fp16 needs a GPU.")
@click.option("--seed", type=int, help="Seed for initialisation, data order, dropout and hashing.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint, exactly.")
@click.option("--strict", is_flag=True,
              help="Characters outside IUPAC are an error naming the record and position (default: read as N, "
                   "with one warning per file giving their count per record).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def pretrain(fasta, fasta_list, config_path, out, max_steps, max_time, batch_size, grad_accum, seq_len, lr, objective,
             device, precision, seed, resume, strict, quiet):
    """Train a Reformer language model on genomes in FASTA/GenBank files.

    With no FASTA it trains on the E. coli K-12 MG1655 genome bundled in data/ with the default
    config (about 10 minutes on a 2-core CPU). The last 10% of every record is held out for
    validation (bits per base). Ctrl-C or SIGTERM saves a checkpoint before stopping.

    \b
    Examples:
      seqformer pretrain --out runs/ecoli
      seqformer pretrain genome.fa.gz --config configs/tiny.yaml --max-steps 50 --out runs/try
      seqformer pretrain --out runs/ecoli --resume --max-steps 2000     # continue / extend
      seqformer pretrain bins/ @more_genomes.txt --out runs/meta        # a directory and a list file
      torchrun --nproc_per_node 2 -m pipelines.cli pretrain --out runs/ddp   # 2 processes
    """
    from reformer_seq.tasks.training import pretrain as run_pretrain

    overrides = {
        "train": {"max_steps": max_steps, "max_time": max_time, "batch_size": batch_size, "grad_accum": grad_accum,
                  "lr": lr, "objective": objective, "device": device, "precision": precision, "seed": seed},
        "data": {"seq_len": seq_len, "strict": True if strict else None},
        "model": {"causal": False} if objective == "masked" else {},
    }
    config = load_run_config(config_path, overrides)
    if max_time == 0:
        config.train.max_time = None
    out = out or f"runs/pretrain-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_pretrain(list(fasta) + [f"@{f}" for f in fasta_list], config, out, resume=resume, progress=not quiet,
                          echo=click.echo)
    if not result.is_main:  # other ranks of a torchrun job stay silent
        return
    val = "n/a" if result.val_bits_per_base is None else f"{result.val_bits_per_base:.4f}"
    if result.val_stderr is not None:
        val += f" ± {result.val_stderr:.4f} ({result.val_windows:,} held-out windows)"
    click.echo(f"{result.step:,} steps in {result.train_time / 60:.1f} min of training "
               f"({result.tokens_per_second:,.0f} tokens/s, validation left out); validation {val} bits per base; "
               f"checkpoint {result.checkpoint}")
    if result.signal is not None:
        click.echo(f"stopped by signal {result.signal}; continue with: seqformer pretrain --out {out} --resume",
                   err=True)
        sys.exit(128 + result.signal)
