"""Batches gathered into groups for the metrics: one metric call per group, not per batch.

A torchmetrics ``update`` costs 100-300 us of Python and a metric function a few small kernels:
per batch that was 10-20% of a small model's step (``config.json``'s Trainer ran at 0.80x of a
bare loop). Each batch's output and target are copied into buffers that live as long as the
metric set, and every :data:`GROUP_BATCHES` batches (sooner when the buffers are full) the
metrics run once on the group. Copies into long-lived buffers, rather than keeping the model's
output tensors alive for a while, leave the allocator's pattern of a plain loop alone: keeping
32 small outputs alive between the steps' large activations made LeNet's steps 6-13% slower on
CPU (glibc's heap could no longer reuse and trim the same way).

Only tensors whose first dimension is the batch, directly or as the values of a dict or the items
of a tuple, are gathered; anything else (a list of per-sample targets, a scalar output), and
batches too large for two of them to fit :data:`GROUP_VALUES`, are measured one by one.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from utils.nested import map_tensors

GROUP_BATCHES = 64  # batches measured together (each measurement costs ~200 us in a training loop, whatever its size)
GROUP_VALUES = 1 << 22  # ...at most this many values per group (16 MB of float32)


def split(value: Any, size: int) -> tuple[list[torch.Tensor], Any] | None:
    """(the tensors, a template to rebuild ``value`` from them), or None if ``value`` is not a
    tensor batched along dim 0 or a dict or tuple of such tensors."""
    if isinstance(value, torch.Tensor):
        return ([value], None) if _batched(value, size) else None
    if isinstance(value, dict):
        items = list(value.values())
        template: Any = ("dict", tuple(value))
    elif isinstance(value, tuple):
        items = list(value)
        template = ("tuple", type(value))
    else:
        return None
    if items and all(isinstance(item, torch.Tensor) and _batched(item, size) for item in items):
        return items, template
    return None


def _batched(tensor: torch.Tensor, size: int) -> bool:
    return tensor.dim() > 0 and tensor.shape[0] == size


def rebuild(template: Any, tensors: list[torch.Tensor]) -> Any:
    if template is None:
        return tensors[0]
    kind, detail = template
    if kind == "dict":
        return dict(zip(detail, tensors))
    return detail._make(tensors) if hasattr(detail, "_fields") else detail(tensors)


def plain(template: Any) -> bool:
    """Whether ``torch.load(weights_only=True)`` rebuilds this template (not a namedtuple)."""
    return template is None or template[0] == "dict" or template[1] is tuple


class BatchGroup:
    """Up to :data:`GROUP_BATCHES` batches of one layout, copied into buffers of ``capacity`` rows.

    The buffers are cut once into slots of the group's first batch size (views, one per batch),
    so the common case, a tensor output and a tensor target of the same size every batch, costs
    two ``copy_`` calls and no slicing: in the training loop, right after backward, each torch
    call from Python costs several times what it does in a tight loop (cold caches), and the
    slices alone were a quarter of the metrics' cost in the MLP benchmark.
    """

    def __init__(self, key: tuple, templates: tuple[Any, Any], n_output: int, capacity: int, like: list[torch.Tensor]):
        self.key, self.templates, self.n_output, self.capacity = key, templates, n_output, capacity
        self.buffers = [torch.empty((capacity, *t.shape[1:]), dtype=t.dtype, device=t.device) for t in like]
        self.rows = self.batches = 0
        self.slot_rows, self.slot_count = 0, 0
        self.slots: list[tuple[torch.Tensor, ...]] = []
        self.pair: tuple | None = None  # (output shape, dtype, target shape, dtype, device) of the common case

    def begin(self, size: int, capacity: int) -> None:
        """Start a group whose first batch has ``size`` rows (the group is empty)."""
        self.capacity, self.slot_count = capacity, capacity // size
        if size != self.slot_rows:
            self.slot_rows = size
            self.slots = [buffer.split(size) for buffer in self.buffers]
        if self.templates == (None, None):
            out, tgt = self.buffers
            self.pair = ((size, *out.shape[1:]), out.dtype, (size, *tgt.shape[1:]), tgt.dtype, out.device)

    @staticmethod
    def layout(output: Any, target: Any, size: int) -> tuple[tuple, tuple[Any, Any], list[torch.Tensor], int] | None:
        """(key, templates, tensors, output's tensor count) of a batch that can be grouped, else None."""
        out, tgt = split(output, size), split(target, size)
        if out is None or tgt is None:
            return None
        tensors = out[0] + tgt[0]
        key = (out[1], tgt[1], len(out[0]), tuple((t.shape[1:], t.dtype, t.device) for t in tensors))
        return key, (out[1], tgt[1]), tensors, len(out[0])

    @staticmethod
    def capacity_for(tensors: list[torch.Tensor], size: int) -> int:
        """Rows for a group starting with a batch of ``size``: :data:`GROUP_BATCHES` such batches
        (when later batches are larger, as a bucketing sampler makes them, the group ends sooner);
        below ``2 * size``, not worth a copy. No more than that: buffers that outlive many steps
        are best small, on the CPU too, where glibc's heap serves them and the steps' activations."""
        per_row = sum(math.prod(t.shape[1:]) for t in tensors)
        return min(GROUP_BATCHES * size, GROUP_VALUES // max(per_row, 1))

    def reusable(self, key: tuple, capacity: int) -> bool:
        return key == self.key and self.buffers[0].shape[0] >= capacity

    def fits(self, key: tuple, size: int) -> bool:
        return key == self.key and self.rows + size <= self.capacity

    def add_pair(self, output: Any, target: Any) -> bool:
        """Add a batch of the group's first size, a tensor output and a tensor target, into the next
        slot (False, and nothing done, for anything else: :meth:`add` takes any layout)."""
        pair, k = self.pair, self.batches
        if (
            pair is None or type(output) is not torch.Tensor or type(target) is not torch.Tensor
            or output.shape != pair[0] or target.shape != pair[2] or output.dtype != pair[1] or target.dtype != pair[3]
            or output.device != pair[4] or target.device != pair[4] or self.rows != k * self.slot_rows or k >= self.slot_count
        ):  # fmt: skip
            return False
        self.slots[0][k].copy_(output)
        self.slots[1][k].copy_(target)
        self.rows += self.slot_rows
        self.batches = k + 1
        return True

    def add(self, tensors: list[torch.Tensor], size: int) -> None:
        for buffer, tensor in zip(self.buffers, tensors):
            buffer[self.rows : self.rows + size].copy_(tensor)
        self.rows += size
        self.batches += 1

    @property
    def full(self) -> bool:
        return self.batches >= GROUP_BATCHES

    def take(self, copy: bool = True) -> tuple[Any, Any, int]:
        """(output, target, samples) of the group, and the group emptied for reuse. With ``copy``,
        new tensors (a metric object may keep them, as AUROC does); without, views of the buffers,
        for metric functions, whose results are used before the buffers are written again."""
        tensors = [buffer[: self.rows].clone() if copy else buffer[: self.rows] for buffer in self.buffers]
        taken = (rebuild(self.templates[0], tensors[: self.n_output]), rebuild(self.templates[1], tensors[self.n_output :]), self.rows)
        self.clear()
        return taken

    def clear(self) -> None:
        """Empty the group; its buffers stay for the next one."""
        self.rows = self.batches = 0

    def state_dict(self) -> dict:
        tensors = [buffer[: self.rows].cpu() for buffer in self.buffers]
        return {
            "output": rebuild(self.templates[0], tensors[: self.n_output]),
            "target": rebuild(self.templates[1], tensors[self.n_output :]),
            "rows": self.rows,
            "batches": self.batches,
            "capacity": self.capacity,
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> BatchGroup:
        output = map_tensors(state["output"], lambda t: t.to(device))
        target = map_tensors(state["target"], lambda t: t.to(device))
        key, templates, tensors, n_output = cls.layout(output, target, state["rows"])
        rows, batches = state["rows"], state["batches"]
        group = cls(key, templates, n_output, state["capacity"], tensors)
        group.begin(rows // batches if rows % batches == 0 else rows, state["capacity"])  # the slots of equal batches
        group.add(tensors, rows)
        group.batches = batches
        return group

