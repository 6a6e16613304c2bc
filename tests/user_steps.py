"""A user's own module, as it would look: a Trainer subclass, a loss that takes the inputs, a transform.

It lives in tests/, outside the project's source packages, so a run naming it trusts its own
checkpoints with ``--trust-checkpoint`` (``tests/helpers.py``: ``trusting``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from trainer import Trainer


class ShrinkingTrainer(Trainer):
    """Adds a weight penalty that grows with the epoch and shrinks with the optimizer step."""

    def __init__(self, *args: Any, penalty: float = 0.01, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.penalty = penalty
        self.seen: list[tuple[int, int]] = []  # (epoch, global_step) of every step, for the tests

    def training_step(self, inputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Any]:
        self.seen.append((self.epoch, self.global_step))
        output = self.forward(inputs)
        weights = sum(p.pow(2).sum() for p in self.model.module.parameters() if p.requires_grad)
        return self.loss(output, target, inputs) + self.penalty * self.epoch * weights / (1 + self.global_step), output


class BareTrainer(Trainer):
    """Returns the loss alone: the pre-flight must say what a step returns."""

    def training_step(self, inputs: torch.Tensor, target: torch.Tensor):
        return self.loss(self.forward(inputs), target, inputs)


def nll_plus_input_energy(output: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A loss that declares ``inputs``: NLL plus a tiny term of the inputs' mean square, so it shows."""
    return F.nll_loss(output, target) + 0.125 * inputs.pow(2).mean()


class Brighten:
    """A transform of the user's own: adds ``amount`` to every pixel of a PIL image."""

    def __init__(self, amount: int = 10):
        self.amount = amount

    def __call__(self, image):
        return image.point(lambda value: min(255, value + self.amount))
