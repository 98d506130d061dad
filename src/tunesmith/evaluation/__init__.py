"""Evaluation: validation loss and generations."""
