"""The network: the language model (lm), its attention layers (attention/), the reversible stack,
the chunked feed-forward and the positional encoding."""
