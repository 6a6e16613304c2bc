"""A regression example: scikit-learn's bundled diabetes data (442 patients, 10 features, no download).

The target is a measure of disease progression one year after baseline (25 to 346). It is
standardized with fixed constants (``(y - 152.13) / 77.01``, the whole set's mean and standard
deviation), so a model starts near the right scale; multiply predictions by 77.01 and add 152.13
to read them in the original units. The features come standardized from scikit-learn. A fixed
permutation holds out 20% (88 patients) as the test split, like the digits loader.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from data_loader.data_loaders import HeldOutDataLoader, held_out_split

TARGET_MEAN, TARGET_STD = 152.13, 77.01
TEST_FRACTION = 0.2
SPLIT_SEED = 20_241_128


def diabetes_dataset(training: bool) -> TensorDataset:
    """``(features (10,) float32, target () float32)`` samples of the training or the test split."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    features = torch.tensor(data.data, dtype=torch.float32) / 0.0476  # unit variance per feature
    target = (torch.tensor(data.target, dtype=torch.float32) - TARGET_MEAN) / TARGET_STD
    chosen = held_out_split(len(target), TEST_FRACTION, SPLIT_SEED, training)
    return TensorDataset(features[chosen], target[chosen])


class DiabetesDataLoader(HeldOutDataLoader):
    """354 training (incl. validation) and 88 test patients; see the module docstring."""

    def make_dataset(self, training: bool) -> TensorDataset:
        return diabetes_dataset(training)
