"""Embeddings of sequences from a trained model (``seqformer embed``): window plans (plan),
output sinks and reading them back (sinks), the engine and the in-memory API (engine), and
files in, files out (embed). See :mod:`.embed` for the whole story."""
from .embed import EmbedSummary, embed_fasta, output_format
from .engine import embed_sequences
from .plan import (DEFAULT_LAYER, FORMATS, POOL_MODES, PRECISIONS, SUFFIX_FORMATS, Window, check_window,
                   default_overlap, plan_windows)
from .sinks import load_embeddings

__all__ = ["EmbedSummary", "embed_fasta", "output_format", "embed_sequences", "DEFAULT_LAYER", "FORMATS", "POOL_MODES",
           "PRECISIONS", "SUFFIX_FORMATS", "Window", "check_window", "default_overlap", "plan_windows",
           "load_embeddings"]
