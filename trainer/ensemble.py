"""Several trained models answering as one: the mean of their outputs (a cross-validation's folds).

For a classifier (a run whose loss is ``nll_loss``/``cross_entropy`` or their ``nn`` classes) the
mean of a tensor output is taken over *probabilities* along the class dimension (1), as an
ensemble should, and given back as log-probabilities, which are valid logits too: a loss, a metric
and ``predict.py`` read them as they read one model's. It is computed as ``logsumexp`` of the
members' ``log_softmax`` minus ``log K``, so members that are all very sure never make it
``-inf``. Everything else (a regression, a VAE's ``mu`` and ``logvar``, any field of a dict, tuple
or namedtuple output) is averaged as it is. What is averaged is decided once, from the config,
never from the values of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

CLASSIFICATION_LOSSES = {"nllloss", "crossentropy", "crossentropyloss"}


def averages_probabilities(config) -> bool:
    """Whether the run's loss says its (tensor) output scores classes."""
    loss = config["loss"]
    name = loss.get("type", "") if isinstance(loss, dict) else str(loss)
    return name.replace(":", ".").rsplit(".", 1)[-1].replace("_", "").lower() in CLASSIFICATION_LOSSES


class Ensemble(nn.Module):
    """The mean of several models' outputs (a cross-validation's folds): class scores averaged as probabilities
    for classifiers, other outputs as they are."""

    def __init__(self, models: Sequence[nn.Module], probabilities: bool = False):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.probabilities = probabilities

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = [member(*args, **kwargs) for member in self.members]
        first = outputs[0]
        if self.probabilities and isinstance(first, torch.Tensor) and first.is_floating_point() and first.dim() >= 2:
            return torch.logsumexp(torch.stack([output.log_softmax(dim=1) for output in outputs]), dim=0) - math.log(len(outputs))
        return average(outputs)


def average(outputs: list[Any]) -> Any:
    """The plain mean of the members' outputs, field by field; what is not a floating tensor is the first member's."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(outputs).mean(dim=0) if first.is_floating_point() else first
    if isinstance(first, dict):
        return {key: average([output[key] for output in outputs]) for key in first}
    if isinstance(first, tuple):
        parts = [average(list(group)) for group in zip(*outputs)]
        return type(first)._make(parts) if hasattr(first, "_fields") else tuple(parts)
    return first
