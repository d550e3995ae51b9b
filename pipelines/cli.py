"""``seqformer``: the click group. Each command lives in its own module and only parses options,
calls one library function and prints; errors a user can fix print one line and exit 2.

Nothing here imports torch: the command modules import the library inside their bodies, so
``seqformer --help``, ``seqformer COMMAND --help`` and ``--version`` start without it
(tests/cli/test_cli_startup.py checks it)."""
from __future__ import annotations

import functools
import sys
import warnings

import click

from reformer_seq.errors import SeqformerError
from reformer_seq.version import __version__


class _Group(click.Group):
    """Turns SeqformerError (bad file, bad config, bad checkpoint) into one line and exit code 2,
    and prints warnings as one line each (``seqformer: warning: ...``, for this command only)."""

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except SeqformerError as e:
            click.echo(f"seqformer: error: {one_line(e.for_cli())}", err=True)
            sys.exit(2)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, ``seqformer: warning: ...``, in the command line's words (no source line)."""
    text = message.for_cli() if hasattr(message, "for_cli") else str(message)
    click.echo(f"seqformer: warning: {one_line(text).removeprefix('seqformer: ')}", err=True)


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


def _tuned(command: click.Command) -> click.Command:
    """Run the command's body with process-wide tuning on (reformer_seq.runtime.tuning: buffer cache,
    heap thresholds, gc.freeze; a library user's default is off). Imported when the body runs, not
    for ``--help``: the tuning module imports torch."""
    body = command.callback
    assert body is not None

    @functools.wraps(body)
    def run(*args, **kwargs):
        from reformer_seq.runtime.tuning import runtime_tuning

        with runtime_tuning():
            return body(*args, **kwargs)

    command.callback = run
    return command


def _register() -> None:
    from .pretrain import pretrain

    cli.add_command(_tuned(pretrain))
    from .embed import embed

    cli.add_command(_tuned(embed))
    from .evaluate import evaluate

    cli.add_command(_tuned(evaluate))
    from .score import score

    cli.add_command(_tuned(score))
    from .score_variants import score_variants

    cli.add_command(_tuned(score_variants))
    from .finetune import finetune
    from .predict import predict

    cli.add_command(_tuned(finetune))
    cli.add_command(_tuned(predict))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="seqformer")


_register()


if __name__ == "__main__":  # python -m pipelines.cli (torchrun -m pipelines.cli)
    main()
