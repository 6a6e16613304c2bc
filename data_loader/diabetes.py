"""A regression example: scikit-learn's bundled diabetes data (442 patients, 10 features, no download).

The features are the raw measurements (age in years, sex as 1 or 2, body-mass index, blood
pressure, six blood serum values); the target is a measure of disease progression one year after
baseline (25 to 346). A fixed permutation holds out 20% (88 patients) as the test split, like the
digits loader. Both are standardised by a scaler fitted on the **training split** (the 354
patients that are not held out), so test statistics never leak in and the test loader refits
the identical scaler. The validation part is inside that split on purpose: one scaler for every
``validation_split`` and fold means the folds of a cross-validation see the same inputs, so
their ensemble (``test.py -r CV_RUN_DIR``, which feeds every fold's model the same batches) and
its exports stay right. ``data_loader/text.py`` shows the stricter way (its vocabulary is fitted
without the validation part), for preprocessing where that matters more than it does for a mean.

It is also the example of the serving seam (``base/serving.py``): the scaler's statistics are its
``serving_state()`` (saved in every checkpoint), and ``serving_transforms`` puts the feature
scaling before the model and the inverse target transform after it, so ``test.py --export`` ships
one module that takes raw measurements and returns predictions in the target's own units.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from base.serving import Serving, Standardize, fit_scaler, standard_serving
from data_loader.held_out import HeldOutDataLoader, held_out_split, scikit_learn_csv

FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
TEST_FRACTION = 0.2
SPLIT_SEED = 20_241_128


def raw_diabetes() -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (442, 10), target (442,))`` as measured, float32 (scikit-learn's raw files)."""
    features, target = _raw_files()
    return torch.tensor(features, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)


@functools.cache
def _raw_files() -> tuple[np.ndarray, np.ndarray]:
    target = scikit_learn_csv("diabetes_target.csv.gz")  # checks that scikit-learn is there
    folder = Path(next(iter(importlib.util.find_spec("sklearn").submodule_search_locations))) / "datasets" / "data"
    with gzip.open(folder / "diabetes_data_raw.csv.gz", "rt") as handle:  # space-separated, unlike the target's file
        features = np.loadtxt(handle)
    features.flags.writeable = target.flags.writeable = False
    return features, target


def diabetes_scaler() -> dict[str, torch.Tensor]:
    """The scaler fitted on the training split (see the module docstring)."""
    features, target = raw_diabetes()
    chosen = held_out_split(len(target), TEST_FRACTION, SPLIT_SEED, training=True)
    return fit_scaler(features[chosen], target[chosen])


def diabetes_dataset(training: bool) -> TensorDataset:
    """``(features (10,), target ())`` samples of the training or test split, both standardised by
    :func:`diabetes_scaler`."""
    scaler = diabetes_scaler()
    features, target = raw_diabetes()
    chosen = held_out_split(len(target), TEST_FRACTION, SPLIT_SEED, training)
    scaled = Standardize(scaler["feature_mean"], scaler["feature_std"])(features[chosen])
    return TensorDataset(scaled, (target[chosen] - scaler["target_mean"]) / scaler["target_std"])


class DiabetesDataLoader(HeldOutDataLoader):
    """354 training (incl. validation) and 88 test patients; see the module docstring."""

    def make_dataset(self, training: bool) -> TensorDataset:
        self.scaler = diabetes_scaler()
        return diabetes_dataset(training)

    def serving_state(self) -> dict:
        return dict(self.scaler)

    def serving_transforms(self, state: dict) -> Serving:
        return standard_serving(state)

    def serving_inputs(self):
        """The raw measurements of this loader's split (the test split for ``training=False``), in batches."""
        features, target = raw_diabetes()
        chosen = held_out_split(len(target), TEST_FRACTION, SPLIT_SEED, self.training)
        return features[chosen].split(self.batch_size)
