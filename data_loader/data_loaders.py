"""Concrete data loaders, built by name from ``data_loader.type``.

Each builds a ``Dataset`` and hands it to :class:`BaseDataLoader`, which owns splitting,
shuffling, sharding and the in-memory path. ``training=False`` gives the test split. A loader names
the arguments it uses or whose default it changes, and passes ``**kwargs`` on to ``BaseDataLoader``
(``shuffle``, ``num_workers``, ``in_memory``, ``folds``, ...: see its docstring), as the README teaches;
an argument the loader sets itself (its ``dataset``) is refused by ``base.refuse_set_args``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from base import BaseDataLoader, refuse_set_args
from data_loader.held_out import HeldOutDataLoader, held_out_split, scikit_learn_csv
from dataflow.transforms import check_transforms, pipeline, to_normalized_tensor
from utils.errors import UserError, first_line

DIGITS_TEST_FRACTION = 0.2
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
DIGITS_SPLIT_SEED = 20_240_917


def digits_dataset(training: bool) -> TensorDataset:
    """scikit-learn's 1,797 handwritten 8x8 digits (shipped inside the package, no download).

    A fixed permutation (its own seed, independent of the run seed) holds out 20% as the test
    split, so ``test.py`` measures samples that training and validation never saw.
    """
    table = torch.from_numpy(scikit_learn_csv("digits.csv.gz"))  # what sklearn.datasets.load_digits reads
    images = table[:, :-1].to(torch.float32).view(-1, 1, 8, 8) / 16.0  # (N, 1, 8, 8) in [0, 1]
    images = (images - 0.3) / 0.4
    labels = table[:, -1].to(torch.int64)
    chosen = held_out_split(len(labels), DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED, training)
    return TensorDataset(images[chosen], labels[chosen])


class DigitsDataLoader(HeldOutDataLoader):
    """Handwritten digits as 1x8x8 images: 1,438 training (incl. validation) and 359 test samples."""

    def make_dataset(self, training: bool) -> TensorDataset:
        return digits_dataset(training)


class MnistDataLoader(BaseDataLoader):
    """torchvision's MNIST from ``data_dir`` (IDX files under ``data_dir/MNIST/raw``).

    Downloads when missing and ``download`` is true and the machine is online; offline, put the
    four IDX files there yourself. ``training=False`` gives the official 10,000-image test set.
    ``transforms``: ``{"train": [...], "eval": [...]}`` of augmentations (``dataflow/transforms.py``;
    default none), followed by the conversion to a float tensor and MNIST's normalisation; the
    validation split, drawn from the training images, sees the ``eval`` list.
    """

    def __init__(
        self,
        data_dir: str = "data/",
        batch_size: int = 128,
        *,
        validation_split: int | float = 0.1,
        num_workers: int = 2,
        training: bool = True,
        download: bool = True,
        transforms: dict | None = None,
        **kwargs: Any,
    ):
        from torchvision import datasets

        refuse_set_args(
            "MnistDataLoader",
            kwargs,
            dataset="reads MNIST from data_dir",
            validation_dataset="validates on its training images with the eval transforms",
        )
        lists = {"train": [], "eval": [], **check_transforms(transforms)}  # default: the images as they are
        tail = to_normalized_tensor(MNIST_MEAN, MNIST_STD)
        eval_transform = pipeline(lists["eval"], tail, "data_loader.args.transforms.eval")
        self.data_dir = data_dir
        validation_dataset = None
        try:
            if not training:
                dataset = datasets.MNIST(data_dir, train=False, download=download, transform=eval_transform)
            else:
                transform = pipeline(lists["train"], tail, "data_loader.args.transforms.train")
                dataset = datasets.MNIST(data_dir, train=True, download=download, transform=transform)
                if lists["train"] != lists["eval"]:  # the validation split sees the evaluation transforms
                    validation_dataset = datasets.MNIST(data_dir, train=True, download=False, transform=eval_transform)
        except (RuntimeError, OSError) as exc:
            raw = Path(data_dir) / "MNIST" / "raw"
            reason = first_line(exc)
            raise UserError(
                f"data_loader.args.data_dir: MNIST is not in {raw} and could not be downloaded ({reason}); "
                f"put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                f"t10k-labels-idx1-ubyte there, or run once online"
            ) from None
        super().__init__(
            dataset,
            batch_size,
            validation_split=validation_split,
            num_workers=num_workers,
            training=training,
            validation_dataset=validation_dataset,
            **kwargs,
        )
