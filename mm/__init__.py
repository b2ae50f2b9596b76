"""mm: multimodal models built on linear-complexity (lightning) attention."""

__version__ = "0.1.0"
