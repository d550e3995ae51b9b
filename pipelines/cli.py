"""``seqformer``: the click group. Each command lives in its own module and only parses options,
calls one library function and prints; errors a user can fix print one line and exit 2."""
from __future__ import annotations

import os
import sys

# Big tensors on 2 MB transparent huge pages. Long inputs return freed buffers to the OS
# (reformer_seq.heap), so every large buffer is a fresh mapping that faults in page by page;
# huge pages cut those faults ~500x (1M tokens: ~30% faster steps, same peak memory). PyTorch
# reads this once, at its first allocation, so it is set before torch is imported.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import click  # noqa: E402

from reformer_seq import __version__  # noqa: E402
from reformer_seq.errors import SeqformerError  # noqa: E402


class _Group(click.Group):
    """Turns SeqformerError (bad file, bad config, bad checkpoint) into one line and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SeqformerError as e:
            click.echo(f"seqformer: error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="seqformer")
def cli() -> None:
    """Reformer language models for whole genomes.

    \b
    Typical session:
      seqformer pretrain --out runs/ecoli            # trains on the bundled E. coli genome
      seqformer embed genes.fa --checkpoint runs/ecoli --out genes.npz
      seqformer evaluate held_out.fa --checkpoint runs/ecoli --out report/

    Run `seqformer COMMAND --help` for each command's options.
    """


def _register() -> None:
    from .pretrain import pretrain

    cli.add_command(pretrain)
    from .embed import embed

    cli.add_command(embed)
    from .evaluate import evaluate

    cli.add_command(evaluate)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="seqformer")


_register()


if __name__ == "__main__":  # python -m pipelines.cli (torchrun -m pipelines.cli)
    main()
