"""Predictions: a model's outputs over batches, turned into per-sample fields.

What a tensor output means is read off it, once, on the first batch:

- ``(N, C)`` scores with ``C > 1``: a classifier. ``output`` is the class probabilities: the
  scores themselves when each row already sums to 1, their ``exp`` when they are
  log-probabilities (``log_softmax``, like the digits models), else their ``softmax`` (logits).
  ``prediction`` is the most probable class.
- ``(N,)`` or ``(N, 1)``: a regression; ``prediction`` and ``output`` are the value.
- anything else with one row per sample: ``output`` is the row's values in their own shape (a
  ``(N, C, H, W)`` output is ``(C, H, W)`` per row); no prediction.

An output that is a dict, a tuple or a namedtuple (a VAE's ``mu`` and ``logvar``) is written
field by field, as the model returns them: each tensor with one row per sample is a field named
by its key (a tuple's by its position, ``"0"``, ``"1"``...; nested ones ``"outer.inner"``, the
names metrics use to point at a field, ``trainer/fields.py``); values without a row per sample
(a scalar) are left out, and said so once. Every field keeps its shape.

The target is written the same way: a tensor as ``target``, a dict, tuple or namedtuple target
field by field as ``target.<name>`` (``target.cls``, ``target.mask``), each in its own shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from logger.logger import get_logger
from trainer.batches import BatchReader, each_batch, run_model
from trainer.precision import Precision
from utils.errors import UserError


@dataclass
class PredictionBatch:
    """One batch of predictions as ``predict.py`` writes it: each sample's index, its fields and (when the data
    has one) its target."""

    index: torch.Tensor  # (n,) int64: each sample's position in the data set
    fields: dict[str, torch.Tensor]  # name -> (n, ...) on the CPU, in the order they are written
    target: dict[str, Any]  # "target" or "target.<field>" -> (n, ...) on the CPU (or a list of n values); empty without targets
    classes: bool = False  # fields["prediction"] holds class indices (rows get a label)


def interpret(output: torch.Tensor) -> str:
    """``"log_probabilities"``, ``"probabilities"``, ``"logits"``, ``"values"`` or ``"other"``; see the module docstring."""
    if output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1):
        return "values"
    if output.dim() != 2 or not output.is_floating_point():
        return "other"
    scores = output.float()
    if torch.allclose(scores.logsumexp(dim=1), torch.zeros_like(scores[:, 0]), atol=1e-3):
        return "log_probabilities"
    if (scores >= 0).all() and torch.allclose(scores.sum(dim=1), torch.ones_like(scores[:, 0]), atol=1e-3):
        return "probabilities"
    return "logits"


def output_fields(output: Any, rows: int, prefix: str = "") -> tuple[dict[str, torch.Tensor], list[str]]:
    """(fields with one row per sample, names of the values left out) of a structured output."""
    if isinstance(output, dict):
        items = [(str(key), value) for key, value in output.items()]
    elif isinstance(output, tuple) and hasattr(output, "_fields"):
        items = list(zip(output._fields, output))
    elif isinstance(output, (tuple, list)):
        items = [(str(position), value) for position, value in enumerate(output)]
    else:
        return {}, [prefix.rstrip(".") or "output"]
    fields: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for name, value in items:
        if isinstance(value, torch.Tensor):
            if value.dim() > 0 and len(value) == rows:
                fields[prefix + name] = _cpu(value)
            else:
                skipped.append(prefix + name)
        else:
            more, left = output_fields(value, rows, f"{prefix}{name}.")
            fields.update(more)
            skipped += left
    return fields, skipped


class Predictor:
    """Args:
    fields: the fields to write (``--fields``); None writes every field.
    step: ``inputs -> output`` for one batch (a Trainer's ``predict``, running its ``predict_step``);
        default: the model's forward.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        amp: str | None = None,
        read_batch: BatchReader | None = None,
        labelled: bool = True,
        fields: list[str] | None = None,
        step: Callable[[Any], Any] | None = None,
    ):
        self.model = model
        self.step = step
        self.precision = Precision(amp, device)
        self.read_batch = read_batch or BatchReader(device)
        self.labelled = labelled
        self.wanted = fields
        self.kind: str | None = None
        self.target_noted = False

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
                output = self.step(inputs) if self.step is not None else run_model(self.model, inputs)
            yield self._select(self._columns(index, output, self._target_fields(target, len(index))))

    def _target_fields(self, target: Any, rows: int) -> dict[str, Any]:
        """The target's columns: ``target`` for a tensor (or a list of one value per row), else ``target.<field>``."""
        if target is None:
            return {}
        if isinstance(target, torch.Tensor):
            if target.dim() == 0 or len(target) != rows:
                raise UserError(f"predict: the target is a tensor of shape {tuple(target.shape)}, not one row per sample ({rows} rows)")
            return {"target": _cpu(target)}
        if (
            isinstance(target, list)
            and len(target) == rows
            and not any(isinstance(item, (torch.Tensor, dict, list, tuple)) for item in target)
        ):
            return {"target": target}  # one plain value per sample (strings, say)
        fields, skipped = output_fields(target, rows, "target.")
        if skipped and not self.target_noted:
            self.target_noted = True
            get_logger().info("predict: left out %s: not one row per sample", skipped)
        return fields

    def _columns(self, index: torch.Tensor, output: Any, target: Any) -> PredictionBatch:
        rows = len(index)
        if not isinstance(output, torch.Tensor):
            fields, skipped = output_fields(output, rows)
            if self.kind is None:
                self.kind = "fields"
                if skipped:
                    get_logger().info("predict: left out %s: not one row per sample", skipped)
            if not fields:
                raise UserError(f"predict: the model's output ({type(output).__name__}) has no tensor with one row per sample to write")
            return PredictionBatch(index, fields, target)
        if output.dim() == 0 or len(output) != rows:
            raise UserError("predict: the model must return a tensor with one row per sample to be written as predictions")
        output = _cpu(output)
        if self.kind is None:
            self.kind = interpret(output)
        if self.kind == "values":
            values = output.float().reshape(rows)
            return PredictionBatch(index, {"prediction": values, "output": values.unsqueeze(1)}, target)
        if self.kind == "other":
            return PredictionBatch(index, {"output": output}, target)
        output = output.float()
        probabilities = {"log_probabilities": output.exp(), "probabilities": output, "logits": output.softmax(dim=1)}[self.kind]
        return PredictionBatch(index, {"prediction": output.argmax(dim=1), "output": probabilities}, target, classes=True)

    def _select(self, batch: PredictionBatch) -> PredictionBatch:
        if self.wanted is None:
            return batch
        unknown = [name for name in self.wanted if name not in batch.fields]
        if unknown:
            raise UserError(f"--fields: the model's predictions have no field {unknown[0]!r}; they have {list(batch.fields)}")
        batch.fields = {name: batch.fields[name] for name in self.wanted}
        batch.classes = batch.classes and "prediction" in batch.fields
        return batch


def _cpu(value: torch.Tensor) -> torch.Tensor:
    """A field as written: on the CPU, floating point as float32 (bf16/fp16 under autocast), other dtypes as they are."""
    value = value.detach().cpu()
    return value.float() if value.is_floating_point() else value
