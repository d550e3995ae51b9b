"""Pre-training a ReformerLM on genomes: :func:`pretrain` (the loop: :mod:`.trainer`) and what it
returns, :class:`TrainResult`. The pieces: :mod:`.optim` (AdamW and the learning-rate schedule),
:mod:`.loss` (the LM loss and validation bits), :mod:`.run_folder` (the run folder's files),
:mod:`.distributed` (multi-process runs), :mod:`.stop` (stopping on a signal)."""
from .trainer import TrainResult, pretrain

__all__ = ["TrainResult", "pretrain"]
