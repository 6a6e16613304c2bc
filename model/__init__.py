"""Models found by name from ``arch.type``: every class exported here."""

from model.model import MLP, DigitsCNN, LeNet

__all__ = ["MLP", "DigitsCNN", "LeNet"]
