"""The one exception type users see.

Anything a user can cause (a bad file, a bad config value, a checkpoint from another version)
raises :class:`SeqformerError` with one line that names the thing and says the fix, in the
words of a library user (``strict=False``); where the fix differs on the command line the error
also carries that line (``cli_message``: ``--strict``). The CLI prints it without a traceback
and exits with status 2, and prints warnings as one ``seqformer: warning:`` line.
"""
from __future__ import annotations

from typing import Optional


class _TwoVoices:
    """A message in two voices: ``str()`` speaks to library users (arguments, ``strict=True``),
    :meth:`for_cli` to command-line users (flags, ``--strict``) when ``cli_message`` is given."""

    def __init__(self, *args: object, cli_message: Optional[str] = None) -> None:
        super().__init__(*args)
        self.cli_message = cli_message

    def for_cli(self) -> str:
        return self.cli_message or str(self)


class SeqformerError(_TwoVoices, Exception):
    """A user-facing error: one line naming the file/record/key and what was expected."""


class ConfigError(SeqformerError, ValueError):
    """A bad configuration value or key (also a ValueError, so plain-Python callers can catch it)."""


class InputError(SeqformerError):
    """A bad input file: missing, empty, wrong format, bad characters, truncated."""


class CheckpointError(SeqformerError):
    """A checkpoint folder that is missing files, is corrupt, or was made by an incompatible version."""


class InputWarning(_TwoVoices, UserWarning):
    """Input that was read, but not as written (lenient mode: characters outside IUPAC read as N)."""
