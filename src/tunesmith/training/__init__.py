"""Training: run folders, hardware choices, callbacks, and the loop on transformers' Trainer."""
