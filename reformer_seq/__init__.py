"""seqformer's library: a Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020) for genome language models."""
from .config import DataConfig, ReformerConfig, RunConfig, TrainConfig, load_run_config
from .errors import CheckpointError, ConfigError, InputError, SeqformerError

from .version import __version__
from .model.lm import ReformerLM
from .runtime.tuning import process_tuning, runtime_tuning, set_process_tuning
from .runtime.policy import ExecutionPolicy, current_policy, set_policy, use_policy
from .genome.tokenizers import ByteTokenizer, NucleotideTokenizer, make_tokenizer, tokenizer_from_spec
from .genome.encoded import EncodedRecord, load_genome
from .genome.fasta import read_records
from .genome.batches import CausalCollator, MaskedCollator, make_collator, make_dataloader, set_epoch
from .genome.windows import GenomeWindowDataset, datasets_from_config, genome_windows
