"""A user's model with two parts and the Trainer subclasses that train each part with its own optimizer
(``trainer/optimizers.py``), for tests/test_optimizers.py and the torchrun test. It lives in tests/,
outside the project's packages, so its runs pass ``--trust-checkpoint``."""

from __future__ import annotations

import signal
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from base import BaseModel
from trainer import Trainer


class TwoPart(BaseModel):
    """``body`` (flattened 8x8 image -> features, with dropout and a BatchNorm buffer) then ``head`` (-> log-probabilities)."""

    def __init__(self, hidden: int = 16, num_classes: int = 10, dropout: float = 0.2, norm: bool = True):
        super().__init__()
        normalise = nn.BatchNorm1d(hidden) if norm else nn.Identity()  # off where per-process batch statistics would differ
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), normalise, nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return F.log_softmax(self.head(self.body(x)), dim=1)


def two_losses(model: nn.Module, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The head learns the NLL; the body the NLL plus a pull of its first weights towards zero: two
    losses sharing one forward, whose gradients differ (so a loss reaching the wrong part shows)."""
    nll = F.nll_loss(output, target)
    return {"body": nll + 0.05 * model.body[1].weight.pow(2).sum(), "head": 2.0 * nll}


class TwoLossTrainer(Trainer):
    """Returns ``{"body": ..., "head": ...}``, only for the optimizers that step; ``stop_at``: ask to
    stop (as SIGTERM would) during engine step ``stop_at`` (0 never), for a mid-epoch resume."""

    def __init__(self, *args: Any, stop_at: int = 0, returns: list[str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stop_at = stop_at
        self.returns = returns  # the names to return losses under instead (bad-input tests): the head's loss for a name of neither

    def training_step(self, inputs: torch.Tensor, target: torch.Tensor):
        if self.stop_at and self.global_step == self.stop_at and not self.in_preflight:
            self.stop.signum = signal.SIGTERM
        output = self.forward(inputs)
        losses = two_losses(self.model.module, output, target)
        if self.returns is not None:
            return {name: losses.get(name, losses["head"]) for name in self.returns}, output
        return {name: loss for name, loss in losses.items() if name in self.stepping}, output

    def validation_step(self, inputs: torch.Tensor, target: torch.Tensor):
        output = self.forward(inputs)
        return two_losses(self.model.module, output, target), output


def config(tmp_path, **trainer) -> dict:
    """The tiny digits experiment with ``TwoPart`` (see :func:`two_part`), 2 epochs."""
    from helpers import tiny_config

    data = tiny_config(tmp_path, **{"epochs": 2, **trainer})
    two_part(data)
    return data


def two_part(data: dict) -> None:
    """Make a tiny config train ``TwoPart`` with two optimizers: the body's Adam steps every 2nd engine
    step (and is scheduled per step), the head's SGD every step (scheduled per epoch)."""
    data["arch"] = {"type": "two_optimizers:TwoPart", "args": {}}
    data["metrics"] = [data["metrics"][0]]
    data["trainer"]["type"] = "two_optimizers:TwoLossTrainer"
    data["trainer"]["args"] = {"stop_at": 0}
    data["trainer"]["monitor"] = "min val_loss"
    data["optimizer"] = {
        "body": {"type": "Adam", "args": {"lr": 0.01}, "params": "body.", "every": 2},
        "head": {"type": "SGD", "args": {"lr": 0.1, "momentum": 0.9}, "params": ["head."]},
    }
    data["lr_scheduler"] = {
        "body": {"type": "StepLR", "args": {"step_size": 3, "gamma": 0.5}, "interval": "step"},
        "head": {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}},
    }
