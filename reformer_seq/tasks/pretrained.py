"""A trained model for a task: the language model (or a fine-tuned model's backbone) and its
tokenizer, from a checkpoint folder or a run folder (its best checkpoint). Every task that takes
``--checkpoint`` (embed, evaluate, score, score-variants, finetune) loads through here; the folder
format itself is :mod:`reformer_seq.runtime.checkpoint`."""
from __future__ import annotations

from typing import Any

from ..genome.tokenizers import tokenizer_from_spec
from ..model.lm import ReformerLM
from ..runtime.checkpoint import read_checkpoint_config, resolve_checkpoint
from .finetune.model import load_finetuned
from ..types import PathLike


def load_pretrained(path: PathLike, map_location: str = "cpu", **overrides: Any):
    """(model, tokenizer, info) from a checkpoint or run folder. ``overrides`` change model config
    fields that do not affect parameters (e.g. ``max_seq_len`` is *not* one of them)."""
    folder = resolve_checkpoint(path)
    info = read_checkpoint_config(folder)
    if "finetune" in info:  # a fine-tuned model: its backbone is the language model
        model, tokenizer, info = load_finetuned(folder, map_location)
        return model.backbone, tokenizer, info
    model = ReformerLM.from_pretrained(folder, map_location, **overrides)
    tokenizer = tokenizer_from_spec(info["tokenizer"])
    return model, tokenizer, {**info, "path": str(folder)}
