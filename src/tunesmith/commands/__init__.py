"""Commands that run tasks: `tunesmith eval` and `tunesmith sweep` (above tasks, below the API)."""
