"""Epoch values that are exact for any metric, with no host read per batch.

Two kinds of metric, both updated on the device:

- **functions** ``fn(output, target) -> 0-dim tensor``, a mean over the batch's samples
  (``model/metric.py``): the epoch value is the sample-weighted mean, ``sum(fn(batch) * n) /
  sum(n)``, summed in float64 on the device and reduced over processes as sums and counts;
- **metric objects** with ``update(output, target)``, ``compute()`` and ``reset()``: torchmetrics
  classes (macro F1, AUROC, R², a confusion matrix...) or your own. They see every sample, so
  their epoch value does not depend on the batch size; torchmetrics objects sync their state over
  DDP processes inside ``compute()``. Their state travels in mid-epoch checkpoints (torchmetrics'
  ``metric_state``, or the object's own ``state_dict``/``load_state_dict``).

Batches are measured in groups: ``update`` queues a batch's (detached) output and target, and
every :data:`GROUP_BATCHES` batches (sooner once :data:`GROUP_VALUES` values wait) the group is
joined along the batch dimension and each metric runs once on it. A torchmetrics ``update``
costs 100-300 us of Python, a function a few small kernels: per batch that was 10-20% of a small
model's step; per group it is noise. The values do not change: objects count the same samples,
and a function (a mean over samples) times the group's size is the sum of its batches' shares.
Groups are fixed by position in the pass, and the queue travels in mid-epoch checkpoints, so a
resumed epoch groups its batches as the uninterrupted one did (bitwise the same sums). Only
tensors whose first dimension is the batch, directly or as the values of a dict or tuple, are
joined; anything else (a list of per-sample targets, a model's scalar output) is measured batch
by batch, as before.

The loss is kept per batch on the device (:class:`LossTracker`) and read every ``log_step``
steps, at checkpoints and at the end of the epoch, when every value is checked for NaN/inf.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any

import torch

from utils import distributed
from utils.errors import UserError
from utils.nested import leaves, map_tensors

GROUP_BATCHES = 32  # batches measured together
GROUP_VALUES = 1 << 22  # ...or fewer, once their outputs and targets hold this many values (16 MB of float32)


def is_metric_object(metric: Any) -> bool:
    return all(callable(getattr(metric, name, None)) for name in ("update", "compute", "reset"))


def _torchmetrics_metric(metric: Any) -> bool:
    module = sys.modules.get("torchmetrics")  # never imported just to ask
    return module is not None and isinstance(metric, module.Metric)


def batch_size(target: Any) -> int:
    return target.shape[0] if isinstance(target, torch.Tensor) else len(target)


def sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class MetricSet:
    """One training or validation pass's metrics; build a separate set for each (``fresh()``)."""

    def __init__(self, metrics: dict[str, Any] | None, device: torch.device):
        metrics = metrics or {}
        self.order = list(metrics)  # the config's order, for the logged row
        self.device = device
        self.functions = {name: fn for name, fn in metrics.items() if not is_metric_object(fn)}
        self.objects = {name: obj for name, obj in metrics.items() if is_metric_object(obj)}
        for obj in self.objects.values():
            if callable(getattr(obj, "to", None)):
                obj.to(device)
        self._fns = list(self.functions.values())
        self.sums = [torch.zeros((), dtype=sum_dtype(device), device=device) for _ in self._fns]
        self.count = 0
        self._queue: list[tuple[Any, Any, int]] = []  # batches not yet measured
        self._queued_values = 0

    @property
    def names(self) -> list[str]:
        return [*self.functions, *self.objects]

    def fresh(self) -> MetricSet:
        """Another set with the same metrics, its own objects and zero state."""
        objects = {}
        for name, obj in self.objects.items():
            obj = copy.deepcopy(obj)
            obj.reset()
            objects[name] = obj
        return MetricSet({name: objects[name] if name in objects else self.functions[name] for name in self.order}, self.device)

    def update(self, output: Any, target: Any, size: int) -> None:
        """One batch of ``size`` samples (``output`` detached); everything stays on the device."""
        if not self.order:
            return
        self._queue.append((output, target, size))
        self._queued_values += _values(output) + _values(target)
        if len(self._queue) >= GROUP_BATCHES or self._queued_values >= GROUP_VALUES:
            self.flush()

    def flush(self) -> None:
        """Measure the queued batches: joined into one group where they can be, else one by one."""
        queue, self._queue, self._queued_values = self._queue, [], 0
        if len(queue) > 1:
            joined = _join(queue)
            if joined is not None:
                queue = [joined]
        for output, target, size in queue:
            self._measure(output, target, size)

    def _measure(self, output: Any, target: Any, size: int) -> None:
        for fn, total in zip(self._fns, self.sums):
            total.add_(fn(output, target), alpha=size)
        for obj in self.objects.values():
            obj.update(output, target)
        self.count += size

    def reset(self) -> None:
        for total in self.sums:
            total.zero_()
        for obj in self.objects.values():
            obj.reset()
        self.count = 0
        self._queue, self._queued_values = [], 0

    def compute(self) -> dict[str, Any]:
        """Epoch values over every process (a collective under DDP): floats for scalars, nested
        lists for other tensors (a confusion matrix), ``<name>_<key>`` for mappings."""
        self.flush()
        values: dict[str, dict[str, Any]] = {}
        if self._fns:
            reduced = distributed.all_reduce_sum(torch.stack([*self.sums, self.sums[0].new_tensor(self.count)])).tolist()
            count = reduced[-1]
            values.update({name: {name: total / count if count else math.nan} for name, total in zip(self.functions, reduced)})
        for name, obj in self.objects.items():
            values[name] = flatten(name, obj.compute())
        return {key: value for name in self.order for key, value in values[name].items()}

    def state_dict(self) -> dict:
        """Mid-epoch state as plain tensors on the CPU (what ``torch.load(weights_only=True)`` reads)."""
        objects = {}
        for name, obj in self.objects.items():
            if _torchmetrics_metric(obj):
                states = {k: [t.cpu() for t in v] if isinstance(v, list) else v.cpu() for k, v in obj.metric_state.items()}
                objects[name] = {"metric_state": states, "updates": obj._update_count}
            elif callable(getattr(obj, "state_dict", None)):
                objects[name] = {"state_dict": obj.state_dict()}
        if not all(_plain(output) and _plain(target) for output, target, _ in self._queue):
            self.flush()  # a checkpoint holds plain data only (weights_only); the group ends here
        queue = [(map_tensors(output, torch.Tensor.cpu), map_tensors(target, torch.Tensor.cpu), size) for output, target, size in self._queue]
        return {"sums": torch.stack(self.sums).cpu() if self.sums else None, "count": self.count, "objects": objects, "queue": queue}

    def load_state_dict(self, state: dict) -> list[str]:
        """Restore a mid-epoch state; returns the names of objects that could not be restored."""
        if self.sums:
            for total, saved in zip(self.sums, state["sums"].to(self.device)):
                total.copy_(saved)
        self.count = state["count"]
        lost = []
        for name, obj in self.objects.items():
            saved = state["objects"].get(name)
            if saved is None:
                lost.append(name)
            elif "metric_state" in saved:
                for key, value in saved["metric_state"].items():
                    setattr(obj, key, [t.to(self.device) for t in value] if isinstance(value, list) else value.to(self.device))
                obj._update_count = saved["updates"]
                obj._computed = None
            else:
                obj.load_state_dict(saved["state_dict"])
        self._queue, self._queued_values = [], 0
        for output, target, size in state.get("queue", []):  # absent in checkpoints of 2026-11
            output, target = map_tensors(output, self._to_device), map_tensors(target, self._to_device)
            self._queue.append((output, target, size))
            self._queued_values += _values(output) + _values(target)
        return lost

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device)


def _plain(value: Any) -> bool:
    """Whether ``torch.load(weights_only=True)`` reads ``value`` back as it was."""
    if isinstance(value, dict):
        return all(isinstance(key, (str, int)) and _plain(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value) in (list, tuple) and all(_plain(item) for item in value)
    return value is None or isinstance(value, (torch.Tensor, bool, int, float, str))


def _values(value: Any) -> int:
    return sum(leaf.numel() for leaf in leaves(value) if isinstance(leaf, torch.Tensor))


def _join(queue: list[tuple[Any, Any, int]]) -> tuple[Any, Any, int] | None:
    """The queued batches as one (output, target, size), or None if they cannot be joined."""
    sizes = [size for _, _, size in queue]
    output = _join_parts([output for output, _, _ in queue], sizes)
    target = _join_parts([target for _, target, _ in queue], sizes) if output is not None else None
    return None if target is None else (output, target, sum(sizes))


def _join_parts(parts: list[Any], sizes: list[int]) -> Any:
    """Tensors batched along dim 0 (directly, or as a dict's values or a tuple's items) joined by
    ``torch.cat``; None for anything else, where joining could mix up samples (a list is often
    one entry per sample)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        ok = all(
            isinstance(part, torch.Tensor) and part.dim() > 0 and part.shape[0] == size and part.shape[1:] == first.shape[1:]
            and part.dtype == first.dtype and part.device == first.device
            for part, size in zip(parts, sizes)
        )
        return torch.cat(parts) if ok else None
    if isinstance(first, dict) and all(isinstance(part, dict) and part.keys() == first.keys() for part in parts):
        joined = {key: _join_tensors([part[key] for part in parts], sizes) for key in first}
        return None if any(value is None for value in joined.values()) else joined
    if isinstance(first, tuple) and all(type(part) is type(first) and len(part) == len(first) for part in parts):
        items = [_join_tensors([part[i] for part in parts], sizes) for i in range(len(first))]
        if any(item is None for item in items):
            return None
        return type(first)._make(items) if hasattr(first, "_fields") else tuple(items)
    return None


def _join_tensors(parts: list[Any], sizes: list[int]) -> torch.Tensor | None:
    return _join_parts(parts, sizes) if isinstance(parts[0], torch.Tensor) else None


def flatten(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(f"{name}_{key}", item))
        return flat
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return {name: value.item() if value.numel() == 1 else value.tolist()}
    if isinstance(value, (int, float)):
        return {name: float(value)}
    raise UserError(f"metrics: {name} computed a {type(value).__name__}; compute() must return a tensor, a number or a mapping of them")


class LossTracker:
    """The loss of each batch, kept on the device until read, then summed on the host in float64.

    The host adds ``loss * batch_size`` one batch after the other, so the epoch total does not
    depend on when the reads fell: a run resumed mid-epoch sums exactly as the uninterrupted one.
    """

    CHUNK = 256  # losses kept as separate 0-dim tensors before one ``stack`` joins them

    def __init__(self) -> None:
        self.total, self.samples = 0.0, 0
        self._chunks: list[torch.Tensor] = []
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._steps: list[int] = []

    def add(self, loss: torch.Tensor, size: int, step: int) -> None:
        """One batch's loss (0-dim); ``step`` names it in errors."""
        self._losses.append(loss.detach())
        self._sizes.append(size)
        self._steps.append(step)
        if len(self._losses) == self.CHUNK:
            self._chunks.append(torch.stack(self._losses).float())
            self._losses = []

    @property
    def unread(self) -> bool:
        return bool(self._sizes)

    def read(self) -> tuple[float | None, tuple[int, float] | None]:
        """(mean loss since the last read, (first non-finite step, its value) or None). Reads the device once."""
        if not self._sizes:
            return None, None
        parts = self._chunks + ([torch.stack(self._losses).float()] if self._losses else [])
        values = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()
        sizes, steps = self._sizes, self._steps
        self._chunks, self._losses, self._sizes, self._steps = [], [], [], []
        for value, size in zip(values, sizes):
            self.total += value * size
            self.samples += size
        bad = next(((step, value) for step, value in zip(steps, values) if not math.isfinite(value)), None)
        return (None, bad) if bad is not None else (sum(values) / len(values), None)

    def epoch_loss(self, device: torch.device) -> float:
        """The sample-weighted mean over every process (a collective under DDP); read first."""
        assert not self.unread, "read() before epoch_loss(): unread losses would be missing"
        totals = distributed.all_reduce_sum(torch.tensor([self.total, float(self.samples)], dtype=sum_dtype(device), device=device))
        total, samples = totals.tolist()
        return total / samples if samples else math.nan

    def reset(self) -> None:
        self.__init__()

    def state_dict(self) -> dict:
        assert not self.unread, "read() before state_dict(): unread losses would be missing from the checkpoint"
        return {"total": self.total, "samples": self.samples}

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        self.total, self.samples = state["total"], state["samples"]
