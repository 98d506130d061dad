"""tunesmith: fine-tune a pre-trained model on your own data from one YAML file."""

from tunesmith.errors import TunesmithError

__version__ = "0.1.0"
__all__ = ["TunesmithError", "__version__"]
