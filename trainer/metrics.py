"""Epoch values that are exact for any metric, with no host read per batch.

Two kinds of metric, both updated on the device:

- **functions** ``fn(output, target) -> 0-dim tensor``, a mean over the batch's samples
  (``model/metric.py``): the epoch value is the sample-weighted mean, ``sum(fn(batch) * n) /
  sum(n)``, summed in float64 on the device and reduced over processes as sums and counts;
- **metric objects** with ``update(output, target)``, ``compute()`` and ``reset()``: torchmetrics
  classes (macro F1, AUROC, R², a confusion matrix...) or your own. They see every sample, so
  their epoch value does not depend on the batch size; torchmetrics objects sync their state over
  DDP processes inside ``compute()``. Their state travels in mid-epoch checkpoints through their
  own ``state_dict``/``load_state_dict`` (a torchmetrics object's states made persistent).

Either kind sees the whole output and target, whatever their structure (a dict target arrives as
a dict), or the fields its config entry points at (``"output": "cls", "target": "cls"``:
``trainer/fields.py``). Every batch counts with its number of samples (``trainer/batches.py``:
:func:`~trainer.batches.count_samples`), never with the length of a dict or tuple.

Batches are measured in groups (``trainer/metric_groups.py``): each batch's output and target
are copied into buffers, and the metrics run once per group of up to 64 batches. The values do
not change: objects count the same samples, and a function (a mean over samples) times the
group's size is the sum of its batches' shares. Groups are fixed by position in the pass, and a
partly filled group travels in mid-epoch checkpoints, so a resumed epoch groups its batches as
the uninterrupted one did (bitwise the same sums).

The loss is kept per batch on the device (:class:`LossTracker`) and read every ``log_step``
steps, at checkpoints and at the end of the epoch, when every value is checked for NaN/inf.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from logger.logger import get_logger
from trainer.fields import MissingField, Selected, pick
from trainer.metric_groups import BatchGroup, Layout, capacity_for, plain
from utils import distributed
from utils.errors import UserError
from utils.nested import map_tensors


def is_metric_object(metric: Any) -> bool:
    return all(callable(getattr(metric, name, None)) for name in ("update", "compute", "reset"))


def sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class MetricSet:
    """One training or validation pass's metrics; build a separate set for each (``fresh()``)."""

    def __init__(self, metrics: dict[str, Any] | None, device: torch.device):
        metrics = metrics or {}
        self.order = list(metrics)  # the config's order, for the logged row
        self.device = device
        # The fields each metric takes ((output path, target path), ``trainer/fields.py``); None: the whole value.
        self.paths = {name: (m.output, m.target) if isinstance(m, Selected) else (None, None) for name, m in metrics.items()}
        metrics = {name: m.metric if isinstance(m, Selected) else m for name, m in metrics.items()}
        self.functions = {name: fn for name, fn in metrics.items() if not is_metric_object(fn)}
        self.objects = {name: obj for name, obj in metrics.items() if is_metric_object(obj)}
        for obj in self.objects.values():
            if callable(getattr(obj, "to", None)):
                obj.to(device)
        self._fns = list(self.functions.values())
        self.sums = [torch.zeros((), dtype=sum_dtype(device), device=device) for _ in self._fns]
        self.count = 0
        self._group: BatchGroup | None = None  # batches copied, not yet measured

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
        metrics = {name: objects[name] if name in objects else self.functions[name] for name in self.order}
        return MetricSet({name: Selected(metric, *self.paths[name]) for name, metric in metrics.items()}, self.device)

    def select(self, name: str, output: Any, target: Any) -> tuple[Any, Any]:
        """The output and target the metric ``name`` takes: the fields it is pointed at, or the whole values."""
        out_path, target_path = self.paths[name]
        if out_path is None and target_path is None:
            return output, target
        try:
            return pick(output, out_path), pick(target, target_path)
        except MissingField as exc:
            side, path = ("output", out_path) if out_path is not None and _lacks(output, out_path) else ("target", target_path)
            raise UserError(f'metrics: {name} is pointed at the {side} field {path!r}, but the {side} {exc}; fix the entry\'s "{side}"') from None

    def update(self, output: Any, target: Any, size: int) -> None:
        """One batch of ``size`` samples (``output`` detached); everything stays on the device.

        The batch joins the open group when it can (``trainer/metric_groups.py``), which is
        measured when full; a batch that cannot be gathered ends the group and is measured alone.
        """
        if not self.order:
            return
        group = self._group
        if group is not None and group.add_same_shape(output, target):  # the common case, two copies
            if group.full:
                self.flush()
            return
        layout = Layout.of(output, target, size)
        if group is not None and group.rows and (layout is None or not group.fits(layout, size)):
            self.flush()
        if layout is None:
            self._measure(output, target, size)
            return
        if group is None or not group.rows:  # a group starts: its size depends on this batch only
            capacity = capacity_for(layout, size)
            if capacity < 2 * size:  # too large to gather: no copy
                self._measure(output, target, size)
                return
            if group is None or not group.reusable(layout, capacity):
                group = self._group = BatchGroup(layout, capacity)
            group.begin(size, capacity)
        group.add(layout.tensors, size)
        if group.full:
            self.flush()

    def flush(self) -> None:
        """Measure the gathered batches (the buffers stay, for the next group of the same layout)."""
        if self._group is not None and self._group.rows:
            self._measure(*self._group.take(copy=bool(self.objects)))

    def _measure(self, output: Any, target: Any, size: int) -> None:
        for name, fn, total in zip(self.functions, self._fns, self.sums):
            total.add_(fn(*self.select(name, output, target)), alpha=size)
        for name, obj in self.objects.items():
            obj.update(*self.select(name, output, target))
        self.count += size

    def reset(self) -> None:
        for total in self.sums:
            total.zero_()
        for obj in self.objects.values():
            obj.reset()
        self.count = 0
        if self._group is not None:
            self._group.clear()

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
        """Mid-epoch state as plain tensors on the CPU (what ``torch.load(weights_only=True)`` reads).

        A metric object's state is its own ``state_dict()``; a torchmetrics object's states are made
        part of it first (``persistent(True)``, its public switch)."""
        group = self._group if self._group is not None and self._group.rows else None
        if group is not None and not all(map(plain, group.templates)):
            self.flush()  # a checkpoint holds plain data only (weights_only): the group is measured before any state is taken
            group = None
        objects = {}
        for name, obj in self.objects.items():
            if callable(getattr(obj, "persistent", None)):
                obj.persistent(True)
            if callable(getattr(obj, "state_dict", None)):
                objects[name] = map_tensors(dict(obj.state_dict()), torch.Tensor.cpu)
        return {"sums": torch.stack(self.sums).cpu() if self.sums else None, "count": self.count, "objects": objects, "group": group.state_dict() if group else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore a mid-epoch state; a metric object that keeps no state_dict is said to restart its count."""
        if self.sums:
            for total, saved in zip(self.sums, state["sums"].to(self.device)):
                total.copy_(saved)
        self.count = state["count"]
        lost = []
        for name, obj in self.objects.items():
            saved = state["objects"].get(name)
            if saved is None:
                lost.append(name)
                continue
            if callable(getattr(obj, "persistent", None)):
                obj.persistent(True)
            obj.load_state_dict(map_tensors(saved, lambda t: t.to(self.device)))
        if lost and (self.count or state.get("group")):
            get_logger().warning(
                "metrics: %s kept no state_dict, so this epoch's value counts only the batches after the resume; "
                "give the metric state_dict/load_state_dict (torchmetrics classes have them)",
                ", ".join(lost),
            )
        group = state["group"]
        self._group = BatchGroup.from_state(group, self.device) if group else None


def _lacks(value: Any, path: str) -> bool:
    try:
        pick(value, path)
    except MissingField:
        return True
    return False


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
            self._chunks.append(_float(torch.stack(self._losses)))
            self._losses = []

    @property
    def unread(self) -> bool:
        return bool(self._sizes)

    def read(self) -> tuple[float | None, tuple[int, float] | None]:
        """(mean loss since the last read, (first non-finite step, its value) or None). Reads the device once."""
        if not self._sizes:
            return None, None
        parts = self._chunks + ([_float(torch.stack(self._losses))] if self._losses else [])
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


def _float(losses: torch.Tensor) -> torch.Tensor:
    """float32 losses as they are (no call into torch); bf16/fp16 ones (a loss under autocast) as float32."""
    return losses if losses.dtype == torch.float32 else losses.float()
