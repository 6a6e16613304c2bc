"""Data loaders found by name from ``data_loader.type``: every class exported here."""

from data_loader.data_loaders import DigitsDataLoader, MnistDataLoader

__all__ = ["DigitsDataLoader", "MnistDataLoader"]
