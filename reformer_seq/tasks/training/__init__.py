"""Pre-training a ReformerLM on genomes."""
