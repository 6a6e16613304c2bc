"""Several trained models answering as one: the mean of their outputs (a cross-validation's folds).

For a classifier the mean is taken over *probabilities*, as an ensemble should: outputs that are
log-probabilities (``log_softmax``) or logits are turned into probabilities, averaged, and given
back as log-probabilities (which are valid logits too), so a loss, a metric and ``predict.py``
read them as they read one model's. Values (a regression) and other tensors are averaged as they
are; a dict, tuple or namedtuple output is averaged field by field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from trainer.predictor import interpret


class Ensemble(nn.Module):
    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return average([member(*args, **kwargs) for member in self.members])


def average(outputs: list[Any]) -> Any:
    """The mean of the members' outputs (see the module docstring)."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        kind = interpret(first.detach().float()) if first.is_floating_point() else "other"
        if kind == "log_probabilities":
            return torch.stack([output.exp() for output in outputs]).mean(dim=0).log()
        if kind == "logits":
            return torch.stack([output.softmax(dim=1) for output in outputs]).mean(dim=0).log()
        if first.is_floating_point():
            return torch.stack(outputs).mean(dim=0)
        return first
    if isinstance(first, dict):
        return {key: average([output[key] for output in outputs]) for key in first}
    if isinstance(first, tuple):
        parts = [average(list(group)) for group in zip(*outputs)]
        return type(first)._make(parts) if hasattr(first, "_fields") else tuple(parts)
    return first
