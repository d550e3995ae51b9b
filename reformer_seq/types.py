"""Type aliases shared by every layer (the bottom of the package, beside ``config`` and ``errors``).

``PathLike`` is what every function that takes a file or folder accepts: a ``str`` or any
:class:`os.PathLike` of ``str`` (``pathlib.Path`` included). Functions turn it into a ``Path`` with
``Path(p)`` before using it.
"""
from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]
