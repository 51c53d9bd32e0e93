"""Training pipeline for the tier models (needs the optional ``train`` extra: TensorFlow)."""
