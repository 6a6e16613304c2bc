"""Predictions: a model's outputs over batches, turned into per-sample predictions.

What ``output`` and ``prediction`` mean is read off the model's output, once, on the first batch:

- ``(N, C)`` scores with ``C > 1``: a classifier. ``output`` is the class probabilities: the
  scores themselves when each row already sums to 1, their ``exp`` when they are
  log-probabilities (``log_softmax``, like the digits models), else their ``softmax`` (logits).
  ``prediction`` is the most probable class.
- ``(N,)`` or ``(N, 1)``: a regression; ``prediction`` and ``output`` are the value.
- anything else with one row per sample: ``output`` is the row's values, flattened; no prediction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.batches import BatchReader, each_batch, run_model
from trainer.precision import Precision
from utils.errors import UserError


@dataclass
class PredictionBatch:
    index: torch.Tensor  # (n,) int64: each sample's position in the data set
    output: torch.Tensor  # (n, k) float32 on the CPU
    prediction: torch.Tensor | None  # (n,) class indices or values
    target: Any | None  # (n,) when the data has targets


def interpret(output: torch.Tensor) -> str:
    """``"log_probabilities"``, ``"probabilities"``, ``"logits"``, ``"values"`` or ``"other"``; see the module docstring."""
    if output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1):
        return "values"
    if output.dim() != 2 or not output.is_floating_point():
        return "other"
    scores = output.float()
    if torch.allclose(scores.logsumexp(dim=1), torch.zeros(len(scores)), atol=1e-3):
        return "log_probabilities"
    if (scores >= 0).all() and torch.allclose(scores.sum(dim=1), torch.ones(len(scores)), atol=1e-3):
        return "probabilities"
    return "logits"


class Predictor:
    def __init__(self, model: nn.Module, device: torch.device, amp: str | None = None, read_batch: BatchReader | None = None, labelled: bool = True):
        self.model = model
        self.precision = Precision(amp, device)
        self.read_batch = read_batch or BatchReader(device)
        self.labelled = labelled
        self.kind: str | None = None

    @torch.no_grad()
    def predict(self, batches: Iterable[tuple[torch.Tensor, Any]]) -> Iterator[PredictionBatch]:
        """``batches`` of ``(sample indices, batch)``; unlabelled batches are the model's inputs alone."""
        self.model.eval()
        for index, batch in each_batch(batches):
            if self.labelled:
                inputs, target = self.read_batch(batch)
            else:
                inputs, target = self.read_batch.inputs_only(batch), None
            with self.precision.autocast():
                output = run_model(self.model, inputs)
            if not isinstance(output, torch.Tensor) or output.dim() == 0 or len(output) != len(index):
                raise UserError("predict: the model must return a tensor with one row per sample to be written as predictions")
            yield self._columns(index, output.detach().float().cpu(), target)

    def _columns(self, index: torch.Tensor, output: torch.Tensor, target: Any) -> PredictionBatch:
        if self.kind is None:
            self.kind = interpret(output)
        if self.kind == "values":
            values = output.reshape(len(output))
            return PredictionBatch(index, values.unsqueeze(1), values, _cpu(target))
        if self.kind == "other":
            return PredictionBatch(index, output.reshape(len(output), -1), None, _cpu(target))
        probabilities = {"log_probabilities": output.exp(), "probabilities": output, "logits": output.softmax(dim=1)}[self.kind]
        return PredictionBatch(index, probabilities, output.argmax(dim=1), _cpu(target))


def _cpu(target: Any) -> Any:
    return target.detach().cpu() if isinstance(target, torch.Tensor) else target
