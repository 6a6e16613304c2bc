"""Evaluation, and how a batch reaches the model: shared by the Trainer and ``test.py``.

How batches are read (override :meth:`Evaluator.unpack_batch` to change it, one method; the
Trainer inherits it, and ``test.py`` evaluates through the same code):

- a tuple or list is ``(inputs, target)``; with more items, ``(*inputs, target)``;
- a dict has its target under ``"label"`` (or ``"labels"``, ``"target"``, ``"targets"``, ``"y"``)
  and every other key is passed to the model as a keyword argument;
- the model may return a tensor or a dict: whatever it returns goes to the loss and metrics.

Metrics are means over samples (0-dim tensors), computed on many batches at once
(``trainer/epoch_sums.py``), summed on the device weighted by sample counts, and reduced over
ranks as sums and counts, so an epoch value equals a single-process evaluation of the same
samples, however they were batched or sharded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from trainer.epoch_sums import EpochSums
from utils import distributed
from utils.errors import UserError
from utils.nested import map_tensors

TARGET_KEYS = ("label", "labels", "target", "targets", "y")


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor of a (nested) batch; ``non_blocking`` overlaps copies from pinned memory.

    Tensors already there are returned as they are (the in-memory path's batches, for one).
    """
    return map_tensors(batch, lambda t: t if t.device == device else t.to(device, non_blocking=non_blocking))


NO_CONTEXT = contextlib.nullcontext()  # stateless, so one serves every ``with``


class Evaluator:
    """Loss and metrics of a model over batches. The Trainer is an Evaluator too."""

    eval_model: nn.Module
    criterion: Callable
    metric_ftns: dict[str, Callable]
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable,
        metric_ftns: dict[str, Callable],
        device: torch.device,
        amp: str | None = None,
        channels_last: bool = False,
    ):
        self.eval_model = model
        self.criterion = criterion
        self.metric_ftns = metric_ftns
        self.device = device
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.channels_last = channels_last

    @property
    def sum_dtype(self) -> torch.dtype:
        return torch.float32 if self.device.type == "mps" else torch.float64

    def prepare(self, batch: Any) -> tuple[Any, torch.Tensor]:
        """Batch to the device, split into (inputs, target), inputs in channels-last when asked."""
        inputs, target = self.unpack_batch(to_device(batch, self.device, non_blocking=self.device.type == "cuda"))
        if self.channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, target

    def evaluate(self, batches: Iterable) -> dict[str, float]:
        """Sample-weighted loss and metrics over all of ``batches`` (on every rank's share)."""
        sums, count = self.evaluate_sums(batches)
        return self.reduce_sums(sums, count)

    # -- how a batch reaches the model (override these to change it) -------------------------

    @staticmethod
    def unpack_batch(batch: Any) -> tuple[Any, torch.Tensor]:
        """Split a batch into ``(inputs, target)``; see the module docstring for the rules."""
        if isinstance(batch, dict):
            key = next((k for k in TARGET_KEYS if k in batch), None)
            if key is None:
                raise UserError(f"batch: a dict batch needs its target under one of {list(TARGET_KEYS)}; got keys {sorted(batch)}")
            return {k: v for k, v in batch.items() if k != key}, batch[key]
        if isinstance(batch, (list, tuple)) and len(batch) >= 2:
            return (batch[0] if len(batch) == 2 else tuple(batch[:-1])), batch[-1]
        raise UserError(f"batch: expected (inputs, target) or a dict with a label, got {type(batch).__name__}")

    @staticmethod
    def run_model(model: nn.Module, inputs: Any) -> Any:
        """Call the model: dict inputs as keyword arguments, tuples as positional ones."""
        if isinstance(inputs, dict):
            return model(**inputs)
        if isinstance(inputs, tuple):
            return model(*inputs)
        return model(inputs)

    def _autocast(self):
        if self.amp_dtype is None:
            return NO_CONTEXT
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def reduce_sums(self, sums: torch.Tensor, count: int, prefix: str = "") -> dict:
        """Sample-weighted means over every rank: reduce sums and counts, never means of means."""
        totals = distributed.all_reduce_sum(torch.cat([sums, sums.new_tensor([count])])).tolist()
        total_count = totals[-1]
        names = ["loss", *self.metric_ftns]
        return {f"{prefix}{name}": value / total_count if total_count else float("nan") for name, value in zip(names, totals)}

    @torch.no_grad()
    def evaluate_sums(self, batches: Iterable) -> tuple[torch.Tensor, int]:
        """Loss and metric sums (batch means times batch size) of this rank's share of ``batches``.

        A non-finite loss is not an error here: it shows as a NaN/inf ``val_loss``.
        """
        model = self.eval_model
        was_training = model.training
        model.eval()
        sums = EpochSums(self.metric_ftns, self.device, self.sum_dtype)
        for index, batch in enumerate(batches):
            inputs, target = self.prepare(batch)
            with self._autocast():
                output = self.run_model(model, inputs)
                loss = self.criterion(output, target)
            sums.add(loss, output, target, index)
        sums.read_losses()
        model.train(was_training)
        return sums.totals(), sums.samples
