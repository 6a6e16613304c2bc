"""The serving seam: what a service applies around the model, so an export takes raw inputs.

A model is trained on what the data loader yields: standardised features, token indices,
standardised targets. A service receives raw inputs and wants final predictions (in the target's
own units, a class, a label), so the transforms in between belong to the model that ships, not
to each service that re-implements them (the classic training/serving skew).

The data loader states them, because it is what fitted them (``BaseDataLoader``):

- ``serving_state()``: what the transforms need (a fitted scaler's statistics, a lookup table),
  as plain data (tensors, numbers, strings, lists and dicts of them). The Trainer saves it in
  every checkpoint (the header's ``serving`` entry), read back with ``torch.load(weights_only=True)``.
- ``serving_transforms(state)``: a :class:`Serving` built from that state (the checkpoint's,
  never refitted at export time): ``before`` takes the raw inputs and returns the model's inputs,
  ``after`` takes the model's output and returns the final predictions (an inverse target
  transform, an argmax, a threshold). Either may be None (nothing to do).
- ``serving_inputs()``: the split's raw inputs, batch by batch, in order, which the export is
  traced and checked on; None when the loader's own batch inputs are the raw inputs.

:class:`ServedModel` is the module that ships: ``after(model(before(raw)))``, one ``nn.Module``
that ``torch.export`` and the ONNX exporter trace as a whole (``app/export.py``). The commonest pair,
a standard scaler of the features and its inverse on the target, is here: :func:`fit_scaler` fits
it, :func:`standard_serving` is its :class:`Serving` (:class:`Standardize`, :class:`Unstandardize`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Serving:
    """The transforms around the model; None is the identity."""

    before: nn.Module | None = None
    """Raw inputs -> the model's inputs (a tensor, a tuple of them, or a dict of keyword arguments)."""
    after: nn.Module | None = None
    """The model's output -> the final predictions."""

    @property
    def empty(self) -> bool:
        return self.before is None and self.after is None


class ServedModel(nn.Module):
    """``after(model(before(*raw)))``: the model as a service calls it.

    The raw inputs are positional: one tensor, several tensors, or one dict of them (a model
    taking keyword arguments gets the dict's items as keyword arguments, as the Trainer calls it,
    ``trainer/batches.py``). ``before`` returns the model's inputs in the same three shapes.
    """

    def __init__(self, model: nn.Module, serving: Serving | None = None):
        super().__init__()
        serving = serving or Serving()
        self.model = model
        self.before = serving.before
        self.after = serving.after

    def forward(self, *inputs: Any) -> Any:
        if self.before is not None:
            inputs = self.before(*inputs)
            inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        if len(inputs) == 1 and isinstance(inputs[0], dict):
            output = self.model(**inputs[0])
        else:
            output = self.model(*inputs)
        return self.after(output) if self.after is not None else output


def fit_scaler(features: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-feature and target mean and standard deviation (population, as scikit-learn's
    StandardScaler): plain tensors, so a loader's ``serving_state()`` can return them as they are."""
    return {
        "feature_mean": features.mean(0),
        "feature_std": features.std(0, correction=0).clamp_min(1e-12),
        "target_mean": target.mean(),
        "target_std": target.std(correction=0).clamp_min(1e-12),
    }


class Standardize(nn.Module):
    """``(x - mean) / std`` with the statistics as buffers (they travel with the module into an export)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Unstandardize(Standardize):
    """The inverse, ``y * std + mean``: a standardised prediction back in the target's own units."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean


def standard_serving(state: dict) -> Serving:
    """The :class:`Serving` of a :func:`fit_scaler` state: features standardised before the model,
    the prediction un-standardised after it (a loader's ``serving_transforms(state)``)."""
    return Serving(Standardize(state["feature_mean"], state["feature_std"]), Unstandardize(state["target_mean"], state["target_std"]))
