"""seqformer's library: a Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020) for genome language models.

The public names below are loaded on first use (PEP 562 module ``__getattr__``), so importing
``reformer_seq`` or one of its light modules (``config``, ``errors``, ``version``) does not import
torch: ``seqformer --help`` and ``--version`` start in a fraction of a second. ``from reformer_seq
import ReformerLM`` works as before and imports what that name needs.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> the module that defines it
_PUBLIC = {
    **dict.fromkeys(["DataConfig", "ReformerConfig", "RunConfig", "TrainConfig", "load_run_config"], ".config"),
    **dict.fromkeys(["CheckpointError", "ConfigError", "InputError", "SeqformerError"], ".errors"),
    "ReformerLM": ".model.lm",
    **dict.fromkeys(["process_tuning", "runtime_tuning", "set_process_tuning"], ".runtime.tuning"),
    **dict.fromkeys(["ExecutionPolicy", "current_policy", "set_policy", "use_policy"], ".runtime.policy"),
    **dict.fromkeys(["ByteTokenizer", "NucleotideTokenizer", "make_tokenizer", "tokenizer_from_spec"],
                    ".genome.tokenizers"),
    **dict.fromkeys(["EncodedRecord", "load_genome"], ".genome.encoded"),
    "read_records": ".genome.fasta",
    **dict.fromkeys(["CausalCollator", "MaskedCollator", "make_collator", "make_dataloader", "set_epoch"],
                    ".genome.batches"),
    **dict.fromkeys(["GenomeWindowDataset", "datasets_from_config", "genome_windows"], ".genome.windows"),
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    try:  # a subpackage or module not imported yet: reformer_seq.tasks, reformer_seq.genome.fasta, ...
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from .config import DataConfig, ReformerConfig, RunConfig, TrainConfig, load_run_config
    from .errors import CheckpointError, ConfigError, InputError, SeqformerError
    from .genome.batches import CausalCollator, MaskedCollator, make_collator, make_dataloader, set_epoch
    from .genome.encoded import EncodedRecord, load_genome
    from .genome.fasta import read_records
    from .genome.tokenizers import ByteTokenizer, NucleotideTokenizer, make_tokenizer, tokenizer_from_spec
    from .genome.windows import GenomeWindowDataset, datasets_from_config, genome_windows
    from .model.lm import ReformerLM
    from .runtime.policy import ExecutionPolicy, current_policy, set_policy, use_policy
    from .runtime.tuning import process_tuning, runtime_tuning, set_process_tuning
