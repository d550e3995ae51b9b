"""Evaluation of a trained model: likelihood, Markov baselines, motif masking, the report."""
