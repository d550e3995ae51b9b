"""Evaluation of a trained model: the likelihood scorer (likelihood), Markov baselines (markov), motif
masking with GC-matched controls (motif_masking), the report and plots (report), and the orchestration
that runs them for a checkpoint (evaluate)."""
