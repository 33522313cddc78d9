"""bluefog: decentralized distributed training for PyTorch over MPI (pure Python)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
