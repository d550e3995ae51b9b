"""Pre-training a ReformerLM on genomes: :func:`pretrain` (:mod:`.pretraining`) and what it
returns, :class:`TrainResult`. The loop, shared with fine-tuning: :mod:`.trainer`. The pieces:
:mod:`.optim` (AdamW and the learning-rate schedule), :mod:`.loss` (the LM loss and validation
bits), :mod:`.run_folder` (the run folder's files and its loss curve), :mod:`.distributed`
(multi-process runs), :mod:`.stop` (stopping on a signal)."""
from .pretraining import TrainResult, pretrain

__all__ = ["TrainResult", "pretrain"]
