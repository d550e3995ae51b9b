"""Zero-shot scores: per-base tracks and variant effects."""
