"""The digits as a sharded stream: the worked example of :class:`~base.BaseStreamLoader`, offline.

On first use, :func:`write_digits_shards` writes scikit-learn's digits as uneven ``.npz`` shards
(arrays ``images`` (n, 1, 8, 8) float32, ``labels`` int64 and ``ids`` int64) into three folders:
``train/`` (7 shards) and ``valid/`` (2) hold exactly the training and validation samples of the
in-memory default (``DigitsDataLoader`` with ``validation_split=0.15``, ``split_seed=0``), in a
fixed shuffled order as a real shard writer would leave them; ``test/`` (3) holds the test split.
``ids`` are the samples' positions in ``digits_dataset(training=True)`` (``test/``: in the test split).

The folder appears whole or not at all (written beside it, then renamed), so processes that
start together (ranks under torchrun) each either write it or find the other's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from base import BaseDataLoader, BaseStreamLoader
from data_loader.data_loaders import digits_dataset
from utils.errors import UserError, first_line

SPLITS = ("train", "valid", "test")
SHARD_WEIGHTS = {"train": (1, 4, 2, 3, 2, 5, 3), "valid": (2, 1), "test": (1, 3, 2)}
"""Relative shard sizes: uneven on purpose, so no shard boundary falls on a batch boundary by luck."""
WRITE_SEED = 7


def digits_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``{split: (images, labels, ids)}``, the splits of the in-memory default loader."""
    training = digits_dataset(training=True)
    train, valid = BaseDataLoader.split_indices(len(training), 0.15, 0)  # the very split DigitsDataLoader makes
    test = digits_dataset(training=False)
    images, labels = training.tensors
    splits = {}
    for name, ids in (("train", torch.tensor(train)), ("valid", torch.tensor(valid))):
        splits[name] = (images[ids], labels[ids], ids)
    splits["test"] = (*test.tensors, torch.arange(len(test)))
    return splits


def write_digits_shards(folder: Path) -> None:
    """Write the shards into ``folder`` unless it already holds them; atomic (see the module docstring)."""
    if all((folder / split).is_dir() for split in SPLITS):
        return
    if folder.exists() and any(folder.iterdir()):
        raise UserError(
            f"data_loader.args.data_dir: {folder} exists but holds no digits shards ({', '.join(SPLITS)}); remove it or choose another data_dir"
        )
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as exc:
        raise UserError(
            f"data_loader.args.data_dir: cannot write shards into {folder} ({exc.strerror}); choose a writable data_dir"
        ) from None
    try:
        generator = torch.Generator().manual_seed(WRITE_SEED)
        for split, (images, labels, ids) in digits_splits().items():
            (staging / split).mkdir()
            order = torch.randperm(len(labels), generator=generator)
            weights = torch.tensor(SHARD_WEIGHTS[split], dtype=torch.float64)
            cuts = [0, *(torch.cumsum(weights, 0) / weights.sum() * len(labels)).round().long().tolist()]
            for number, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
                chosen = order[lo:hi]
                with open(staging / split / f"shard-{number:05d}.npz", "wb") as file:
                    np.savez(file, images=images[chosen].numpy(), labels=labels[chosen].numpy(), ids=ids[chosen].numpy())
        try:
            os.rename(staging, folder)  # atomic; fails if another process got there first
        except OSError:
            if not all((folder / split).is_dir() for split in SPLITS):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class DigitsStreamLoader(BaseStreamLoader):
    """The digits read from ``.npz`` shards under ``data_dir`` (written there on first use):
    1,222 training, 216 validation and 359 test samples, the in-memory default's splits."""

    def __init__(
        self,
        data_dir: str = "data/digits_shards",
        batch_size: int = 32,
        shuffle: bool = True,
        num_workers: int = 2,
        training: bool = True,
        shuffle_buffer: int = 0,
        drop_last: bool = False,
        shard: tuple[int, int] | None = None,
    ):
        folder = Path(data_dir)
        write_digits_shards(folder)
        super().__init__(
            folder / ("train" if training else "test"),
            batch_size,
            shuffle,
            num_workers,
            training=training,
            shuffle_buffer=shuffle_buffer,
            drop_last=drop_last,
            validation_shards=folder / "valid" if training else None,
            shard=shard,
        )

    def read_shard(self, path: Path, start: int = 0) -> Iterator[tuple[torch.Tensor, int]]:
        """``(image, label)`` samples from sample ``start`` on (slicing the arrays skips cheaply)."""
        images, labels = read_arrays(path)
        yield from zip(torch.from_numpy(images[start:]), labels[start:].tolist())

    def count_samples(self, path: Path) -> int:
        return len(read_arrays(path)[1])


def read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A shard's ``images`` and ``labels``; a damaged or foreign file is a data error naming it, not a
    bug of this loader's: a truncated download, an empty file, arrays under other names."""
    try:
        with np.load(path, allow_pickle=False) as shard:
            images, labels = shard["images"], shard["labels"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"data_loader: {path} is not a readable digits shard ({type(exc).__name__}: {first_line(exc, 120)}); replace or remove it") from None
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"data_loader: {path} is not a digits shard (images {images.shape}, labels {labels.shape}); replace or remove it")
    return images, labels
