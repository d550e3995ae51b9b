"""seqformer's version: one source, the ``version`` in pyproject.toml, read from the installed
package's metadata (so a checkpoint records the version that wrote it)."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("seqformer")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
