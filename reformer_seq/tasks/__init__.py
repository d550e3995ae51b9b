"""What users run: training, embedding, evaluation, scoring (per-base tracks, variants),
fine-tuning, motifs and the repeat-recall study tools."""
