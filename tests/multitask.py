"""A user's own multi-task and dense-output code, as it would look in model/ and data_loader/.

- :class:`MultiTaskDataLoader`: samples ``(x, {"cls": y, "reg": r})`` (a dict target), 113 test
  samples and 150 training ones, sizes no batch size of the tests divides;
- :class:`TwoHeads`: one trunk, a classification head (log-probabilities) and a regression head,
  returning ``{"cls": (N, 3), "reg": (N,)}``; :func:`multitask_loss` is NLL plus MSE;
- :class:`MaskDataLoader` and :class:`TinySegmenter`: a segmentation-like pair, ``(N, 1, 4, 4)``
  images, ``(N, 4, 4)`` masks, ``(N, 2, 4, 4)`` scores;
- :class:`SequenceFirst`: batches whose tensors disagree on the number of samples;
- :class:`TermsTrainer` logs the loss's two terms (``self.log``); :class:`MaskTrainer` predicts
  the argmax mask (``predict_step``).

It lives in tests/, outside the project's source packages, so a run naming it trusts its own
checkpoints with ``--trust-checkpoint`` (``tests/helpers.py``: ``trusting``).
"""

from __future__ import annotations

import os
import signal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from base import BaseDataLoader
from trainer import Trainer

TEST_SAMPLES, TRAIN_SAMPLES = 113, 150


class MultiTaskData(Dataset):
    """Features whose class is the largest of their first three values and whose value is their sum."""

    def __init__(self, samples: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(samples, 6, generator=generator)
        self.cls = self.x[:, :3].argmax(dim=1)
        self.reg = self.x.sum(dim=1) + 0.1 * torch.randn(samples, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], {"cls": self.cls[index], "reg": self.reg[index]}


class MultiTaskDataLoader(BaseDataLoader):
    def __init__(self, batch_size: int = 16, shuffle: bool = True, validation_split: float = 0.2, training: bool = True):
        data = MultiTaskData(TRAIN_SAMPLES, seed=1) if training else MultiTaskData(TEST_SAMPLES, seed=2)
        super().__init__(data, batch_size, shuffle, validation_split, training=training)


class TwoHeads(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, hidden), nn.ReLU())
        self.cls = nn.Linear(hidden, 3)
        self.reg = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        return {"cls": F.log_softmax(self.cls(features), dim=1), "reg": self.reg(features).squeeze(1)}


class SignalingTwoHeads(TwoHeads):
    """:class:`TwoHeads` that sends itself SIGTERM at its ``at``-th training forward (the pre-flight's is the first)."""

    def __init__(self, hidden: int = 16, at: int = 0):
        super().__init__(hidden)
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(x)


def multitask_loss(output: dict, target: dict) -> torch.Tensor:
    return F.nll_loss(output["cls"], target["cls"]) + F.mse_loss(output["reg"], target["reg"])


class TermsTrainer(Trainer):
    """Logs the two terms of :func:`multitask_loss` in training and validation."""

    def training_step(self, inputs, target):
        output = self.forward(inputs)
        cls, reg = F.nll_loss(output["cls"], target["cls"]), F.mse_loss(output["reg"], target["reg"])
        self.log("cls_loss", cls)
        self.log("reg_loss", reg.item())  # a number works too
        return cls + reg, output

    validation_step = training_step


class HandSteppingTrainer(Trainer):
    """Steps a second optimizer of its own inside the step, by hand, and counts those steps in a part of its own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra = torch.optim.SGD(self.model.module.parameters(), lr=0.1, momentum=0.9)
        self.hand = {"steps": 0}

    def training_step(self, inputs, target):
        self.loss(self.forward(inputs), target).backward()
        self.extra.step()
        self.extra.zero_grad()
        self.hand["steps"] += 1
        output = self.forward(inputs)
        return self.loss(output, target), output

    def state_parts(self):
        return {**super().state_parts(), "extra": self.extra, "hand": Counted(self.hand)}


class Counted:
    def __init__(self, counts: dict):
        self.counts = counts

    def state_dict(self) -> dict:
        return dict(self.counts)

    def load_state_dict(self, state: dict) -> None:
        self.counts.update(state)


def squared_error(output: dict, target: dict) -> torch.Tensor:
    """A metric function of the whole dicts: the regression head's mean squared error."""
    return (output["reg"] - target["reg"]).pow(2).mean()


class MaskData(Dataset):
    """4x4 images whose mask marks the pixels above zero."""

    def __init__(self, samples: int, seed: int):
        self.images = torch.randn(samples, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
        self.masks = (self.images[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.masks[index]


class MaskDataLoader(BaseDataLoader):
    def __init__(self, batch_size: int = 8, shuffle: bool = True, validation_split: float = 0.0, training: bool = True):
        super().__init__(
            MaskData(45 if training else 21, seed=3 if training else 4), batch_size, shuffle, validation_split, training=training
        )


class TinySegmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.conv(x), dim=1)


class MaskTrainer(Trainer):
    def predict_step(self, inputs):
        scores = self.forward(inputs)
        return {"mask": scores.argmax(dim=1), "scores": scores}


def pixel_accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output.argmax(dim=1) == target).float().mean()


class SequenceFirst(MultiTaskDataLoader):
    """The features as a sequence of 2 steps of 3, sequence first: ``(2, B, 3)`` beside ``(B,)`` targets."""

    def unpack_batch(self, batch):
        x, target = batch
        return x.view(len(x), 2, 3).transpose(0, 1), target


class SequenceFirstCounted(SequenceFirst):
    """:class:`SequenceFirst` saying how many samples its batches hold."""

    def batch_samples(self, inputs, target) -> int:
        return inputs.shape[1]


class DistilTrainer(Trainer):
    """A student trained on its loss mixed with the KL divergence to a frozen teacher loaded from a checkpoint."""

    def __init__(self, *args, teacher: str, mix: float = 0.5, **kwargs):
        from app.loading import load_model

        super().__init__(*args, **kwargs)
        self.teacher = load_model(teacher, trust_checkpoint=True).requires_grad_(False).to(self.device)
        self.mix = mix

    def training_step(self, inputs, target):
        output = self.forward(inputs)
        with torch.no_grad():
            taught = self.teacher(inputs)["cls"]
        kl = F.kl_div(output["cls"], taught, log_target=True, reduction="batchmean")
        self.log("kl", kl)
        return (1 - self.mix) * self.loss(output, target) + self.mix * kl, output
