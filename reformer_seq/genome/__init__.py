"""Sequences in: FASTA/GenBank reading and the token cache (fasta), tokenizers, training windows
and data loaders (windows), planted repeats, shuffles, labelled sets for fine-tuning."""
