"""Data: readers -> row validation -> templates -> tokenization -> collators."""
