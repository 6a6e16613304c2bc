"""Models found by name from ``arch.type``: every class exported here."""

from model.model import MLP, DigitsCNN, LeNet, Regressor
from model.text import TextClassifier
from model.transfer import TransferClassifier
from model.vae import VAE

__all__ = ["MLP", "DigitsCNN", "LeNet", "Regressor", "TextClassifier", "TransferClassifier", "VAE"]
