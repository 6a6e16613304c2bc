"""The configured loss as the steps call it: ``loss(output, target, inputs)``.

A loss is ``fn(output, target)``. One that needs the batch's inputs too (a reconstruction loss,
say) declares a parameter named ``inputs``: ``def vae_loss(output, target, inputs)``, or
``forward(self, output, target, inputs)`` for an ``nn.Module``; it is then given the inputs as the
model received them (a tensor, a tuple, or a dict of keyword arguments). Anything else that a
loss should know (the epoch, the step) belongs in a Trainer subclass's ``training_step``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def takes_inputs(criterion: Callable) -> bool:
    """Whether ``criterion`` declares a parameter named ``inputs`` (an ``nn.Module``: its ``forward``)."""
    target = criterion.forward if isinstance(criterion, nn.Module) else criterion
    try:
        return "inputs" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


class Loss:
    """The configured loss as the engine calls it: ``loss(output, target)``, with the batch's inputs passed to
    a loss that declares an ``inputs`` parameter."""

    def __init__(self, criterion: Callable, device: torch.device):
        self.criterion = criterion.to(device) if isinstance(criterion, nn.Module) else criterion
        self.takes_inputs = takes_inputs(criterion)

    def __call__(self, output: Any, target: Any, inputs: Any = None) -> torch.Tensor:
        if self.takes_inputs:
            return self.criterion(output, target, inputs=inputs)
        return self.criterion(output, target)
