"""User code with deliberate mistakes, for ``tests/test_bad_inputs.py``.

Each piece stands for something a user writes in ``model/`` or ``data_loader/``: some have a bug
of their own (a traceback into this file is the right answer, exit code 1), others are correct
code that does not fit the rest of the config (a one-line ``error:``, exit code 2). Configs name
them as ``user_bugs:Name`` (``tests/`` is on the path in-process, and via ``TESTS_ENV`` in
subprocesses). The line markers (``# BUG: ...``) let the tests find the line a traceback must name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fixtures.data import tiny_dataset
from fixtures.model import TinyCNN
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from base import BaseDataLoader, BaseModel

# -- bugs in the user's own code: a traceback into this file, exit code 1 -----------------------------


class MisspelledArgumentCNN(TinyCNN):
    """``__init__`` passes a keyword that ``nn.Linear`` does not have."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.25):
        super().__init__(num_classes, dropout)
        self.extra = nn.Linear(num_classes, num_classes, biass=True)  # BUG: biass


class NameErrorCNN(TinyCNN):
    """``forward`` uses a name that does not exist."""

    def forward(self, x):
        x = super().forward(x)
        return x * temperature  # BUG: temperature  # noqa: F821


class ShapeBugCNN(TinyCNN):
    """``forward`` reshapes with a wrong size: a bug in the model, whatever the data."""

    def forward(self, x):
        return super().forward(x).reshape(-1, 7)  # BUG: reshape


def misspelled_loss(output, target):
    return F.nll_los(output, target)  # BUG: nll_los


def zero_division_metric(output, target):
    samples = len(target) // (len(target) - len(target))  # BUG: division
    return (output.argmax(dim=1) == target).float().sum() / samples


class MisspelledDigitsDataLoader(BaseDataLoader):
    """``__init__`` calls the dataset builder with a misspelled keyword."""

    def __init__(self, batch_size: int = 64, validation_split: float = 0.15):
        super().__init__(tiny_dataset(trainig=True), batch_size, validation_split=validation_split)  # BUG: trainig


class BrokenItemDataset(Dataset):
    def __init__(self):
        self.data = tiny_dataset(training=True)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        image, label = self.data[index]
        return image, {"digit": label}["label"]  # BUG: key


class BrokenItemDataLoader(BaseDataLoader):
    def __init__(self, batch_size: int = 64, validation_split: float = 0.15):
        super().__init__(BrokenItemDataset(), batch_size, validation_split=validation_split)


# -- correct code that does not fit the config: a one-line error, exit code 2 ------------------------


def float_metric(output, target) -> float:
    """Returns a Python float instead of a tensor."""
    return (output.argmax(dim=1) == target).float().mean().item()


def per_sample_metric(output, target) -> torch.Tensor:
    """Returns one value per sample instead of one per batch."""
    return (output.argmax(dim=1) == target).float()


class DictOutputCNN(TinyCNN):
    """Returns ``{"logits": ...}``; ``dict_nll_loss`` reads it, tensor metrics cannot."""

    def forward(self, x):
        return {"logits": super().forward(x)}


def dict_nll_loss(output, target):
    return F.nll_loss(output["logits"], target)


class DictDigits(Dataset):
    """The digits as ``{"image": ..., "digit": ...}`` samples: the target is under a key of its own."""

    def __init__(self, training: bool):
        self.data = tiny_dataset(training)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        image, label = self.data[index]
        return {"image": image, "digit": label}


class DictDigitsDataLoader(BaseDataLoader):
    def __init__(self, batch_size: int = 64, validation_split: float = 0.15, training: bool = True):
        super().__init__(DictDigits(training), batch_size, validation_split=validation_split if training else 0.0, training=training)


class ImageKeywordCNN(BaseModel):
    """A model whose ``forward`` takes the batch's ``image`` by keyword."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.net = TinyCNN(num_classes, 0.0)

    def forward(self, image):
        return self.net(image)


class EmptyDataLoader(BaseDataLoader):
    """A data set with no samples (an empty folder or file, say)."""

    def __init__(self, batch_size: int = 64, validation_split: float = 0.0):
        empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64))
        super().__init__(empty, batch_size, validation_split=validation_split)


class ShiftedLabelsDataLoader(BaseDataLoader):
    """The digits with labels 1..10 instead of 0..9 (``-1`` forgotten): 10 is beyond 10 classes."""

    def __init__(self, batch_size: int = 64, validation_split: float = 0.15, shift: int = 1):
        images, labels = tiny_dataset(training=True).tensors
        super().__init__(TensorDataset(images, labels + shift), batch_size, validation_split=validation_split)
