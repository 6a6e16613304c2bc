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
that ``torch.export`` and the ONNX exporter trace as a whole (``app/export.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
