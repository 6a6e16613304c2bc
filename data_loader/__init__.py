"""Data loaders found by name from ``data_loader.type``: every class exported here."""

from data_loader.data_loaders import DigitsDataLoader, MnistDataLoader
from data_loader.diabetes import DiabetesDataLoader
from data_loader.digit_shards import DigitsStreamLoader
from data_loader.image_folder import ImageFolderDataLoader
from data_loader.text import TextDataLoader

__all__ = ["DiabetesDataLoader", "DigitsDataLoader", "DigitsStreamLoader", "MnistDataLoader", "ImageFolderDataLoader", "TextDataLoader"]
