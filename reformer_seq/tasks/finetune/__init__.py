"""Fine-tuning a pre-trained model on labelled sequences, and predicting with it."""
