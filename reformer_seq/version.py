"""seqformer's version: the one place it is written. pyproject.toml reads it from here
(``[tool.setuptools.dynamic] version = {attr = ...}``, parsed without importing the package); the
CLI's ``--version``, checkpoints' ``info.json`` and reports take it from here too."""

__version__ = "0.1.0"
