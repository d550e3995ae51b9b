"""seqformer's version: the one place it is written. pyproject.toml reads it from here
(``[tool.setuptools.dynamic] version = {attr = ...}``, parsed without importing the package), so
the installed package's metadata says the same; the CLI's ``--version``, checkpoints' info.json
(the version that wrote them) and reports take it from here, which holds in a source tree that
was never installed too."""

__version__ = "0.1.0"
