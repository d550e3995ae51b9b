"""Files that ship with seqformer: the run configs and the default genome.

In a clone (or an editable install) they are the repository's ``configs/`` and ``data/``; a wheel
(``pip install .``) carries them inside the package as ``reformer_seq/configs`` and
``reformer_seq/data`` (mapped in ``pyproject.toml``), found with :mod:`importlib.resources`, so
``seqformer pretrain`` works from any folder.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

from ..errors import InputError

REPO = Path(__file__).resolve().parents[2]


def resource(*parts: str) -> Path:
    """The shipped file ``parts`` (e.g. ``"configs", "default.yaml"``): inside the installed
    package, else in the repository; InputError when neither has it."""
    packaged = importlib.resources.files("reformer_seq").joinpath(*parts)
    if packaged.is_file():
        return Path(str(packaged))
    repo = REPO.joinpath(*parts)
    if repo.is_file():
        return repo
    raise InputError(f"{'/'.join(parts)}: seqformer's bundled file is missing (looked in {packaged} and {repo}); "
                     f"reinstall seqformer, or pass the file explicitly")
