"""The one exception type users see.

Anything a user can cause (a bad file, a bad config value, a checkpoint from another version)
raises :class:`SeqformerError` with one line that names the thing and says the fix. The CLI
prints that line without a traceback and exits with status 2.
"""
from __future__ import annotations


class SeqformerError(Exception):
    """A user-facing error: one line naming the file/record/key and what was expected."""


class ConfigError(SeqformerError, ValueError):
    """A bad configuration value or key (also a ValueError, so plain-Python callers can catch it)."""


class InputError(SeqformerError):
    """A bad input file: missing, empty, wrong format, bad characters, truncated."""


class CheckpointError(SeqformerError):
    """A checkpoint folder that is missing files, is corrupt, or was made by an incompatible version."""


class InputWarning(UserWarning):
    """Input that was read, but not as written (lenient mode: characters outside IUPAC read as N)."""
