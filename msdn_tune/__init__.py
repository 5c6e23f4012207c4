"""msdn-tune: distributed hyperparameter search for MSDN++ zero-shot learning (ARCHITECTURE.md)."""

__version__ = "0.1.0"
