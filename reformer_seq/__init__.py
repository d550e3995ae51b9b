"""seqformer's library: a Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020) for genome language models."""
from .config import DataConfig, ReformerConfig, RunConfig, TrainConfig, load_run_config
from .errors import CheckpointError, ConfigError, InputError, SeqformerError

__version__ = "0.1.0"
from .model import ReformerLM
