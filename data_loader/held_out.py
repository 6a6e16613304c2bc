"""Helpers of the shipped in-memory examples (digits, diabetes): scikit-learn's bundled data files
read without importing scikit-learn, a fixed held-out test split, and a loader made of the two.

They live apart from ``data_loader/data_loaders.py`` (the digits example, the file a new project's
README says to rewrite), so an example kept in a project whose digits loader is gone still imports.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from base import BaseDataLoader, refuse_set_args
from utils.errors import UserError


def scikit_learn_csv(name: str) -> np.ndarray:
    """One of the data files scikit-learn ships (``sklearn/datasets/data/``), read as its loaders read
    it but without importing scikit-learn, whose import (with SciPy) would be most of a small run's start-up."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name if spec else None
    if path is None or not path.is_file():
        raise UserError(f"data_loader: scikit-learn's {name} is not installed here; install scikit-learn (pip install scikit-learn)")
    with gzip.open(path, "rt") as handle:
        return np.loadtxt(handle, delimiter=",")


def held_out_split(samples: int, test_fraction: float, seed: int, training: bool) -> torch.Tensor:
    """The sorted indices of the training part, or of the held-out test part, of a fixed permutation
    drawn from its own seed (never the run's), so every run and ``test.py`` agree on the split."""
    order = torch.randperm(samples, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(samples * test_fraction))
    return (order[n_test:] if training else order[:n_test]).sort().values


class HeldOutDataLoader(BaseDataLoader):
    """A data set in memory with a fixed held-out test split (``training=False``); subclasses name
    the data set in ``make_dataset(training)``."""

    def make_dataset(self, training: bool) -> TensorDataset:
        raise NotImplementedError

    def __init__(self, batch_size: int = 64, *, validation_split: int | float = 0.15, training: bool = True, **kwargs: Any):
        """``batch_size`` and ``validation_split`` with this loader's defaults; the rest: :class:`BaseDataLoader`."""
        refuse_set_args(type(self).__name__, kwargs, dataset="makes its data set in make_dataset(training)")
        super().__init__(self.make_dataset(training), batch_size, validation_split=validation_split, training=training, **kwargs)
