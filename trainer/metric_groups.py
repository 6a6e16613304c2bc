"""Batches gathered into groups for the metrics: one metric call per group, not per batch.

Why: a torchmetrics ``update`` costs 100-300 us of Python and a metric function a few small
kernels, which per batch is a large share of a small model's step. So each batch's output and
target are *copied* into buffers that live as long as the metric set, and every
:data:`GROUP_BATCHES` batches (sooner when the buffers are full) the metrics run once on the
whole group. Copying into long-lived buffers, rather than keeping the model's output tensors
alive until the group is measured, leaves the memory allocator's pattern the one of a plain loop
(keeping many small outputs alive between large activations slows a CNN's steps on the CPU).

What can be gathered: tensors whose first dimension is the batch, alone or as the values of a
dict or the items of a tuple, for both output and target (their *layout*). Anything else (a list
of per-sample targets, a scalar output), and batches too large for two of them to fit
:data:`GROUP_VALUES`, is measured batch by batch.

The common case, a tensor output and a tensor target of the same shapes every batch, takes a
short path: the buffers are cut once into one slot per batch, and a batch costs two ``copy_``
calls (in the training loop, right after backward, each torch call from Python costs several
times what it does in a tight loop, so the number of calls is what counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from utils.nested import map_tensors

GROUP_BATCHES = 64  # batches measured together (a measurement costs ~200 us in a training loop, whatever its size)
GROUP_VALUES = 1 << 22  # ...at most this many values per group (16 MB of float32)


@dataclass(frozen=True)
class Layout:
    """How a batch's output and target are made of batched tensors."""

    key: tuple  # what two batches must share to be gathered together
    templates: tuple[Any, Any]  # how to rebuild the output and the target from their tensors
    tensors: list[torch.Tensor]  # the output's tensors, then the target's
    n_output: int

    @staticmethod
    def of(output: Any, target: Any, size: int) -> Layout | None:
        """The layout of a batch of ``size`` samples, or None when it cannot be gathered."""
        out, tgt = _split(output, size), _split(target, size)
        if out is None or tgt is None:
            return None
        tensors = out[0] + tgt[0]
        key = (out[1], tgt[1], len(out[0]), tuple((t.shape[1:], t.dtype, t.device) for t in tensors))
        return Layout(key, (out[1], tgt[1]), tensors, len(out[0]))


def _split(value: Any, size: int) -> tuple[list[torch.Tensor], Any] | None:
    """(the tensors, a template to rebuild ``value`` from them), or None if ``value`` is not a
    tensor batched along dim 0 or a dict or tuple of such tensors."""
    if isinstance(value, torch.Tensor):
        return ([value], None) if value.dim() > 0 and value.shape[0] == size else None
    if isinstance(value, dict):
        items, template = list(value.values()), ("dict", tuple(value))
    elif isinstance(value, tuple):
        items, template = list(value), ("tuple", type(value))
    else:
        return None
    if items and all(isinstance(item, torch.Tensor) and item.dim() > 0 and item.shape[0] == size for item in items):
        return items, template
    return None


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


def capacity_for(layout: Layout, size: int) -> int:
    """Rows for a group that starts with a batch of ``size``: :data:`GROUP_BATCHES` such batches,
    within :data:`GROUP_VALUES` (larger later batches end the group sooner). Buffers that outlive
    many steps are best small, on the CPU too, where the heap serves them and the activations."""
    per_row = sum(math.prod(t.shape[1:]) for t in layout.tensors)
    return min(GROUP_BATCHES * size, GROUP_VALUES // max(per_row, 1))


class BatchGroup:
    """Up to :data:`GROUP_BATCHES` batches of one layout, copied into buffers of ``capacity`` rows."""

    def __init__(self, layout: Layout, capacity: int):
        self.key, self.templates, self.n_output = layout.key, layout.templates, layout.n_output
        self.buffers = [torch.empty((capacity, *t.shape[1:]), dtype=t.dtype, device=t.device) for t in layout.tensors]
        self.capacity = capacity
        self.rows = self.batches = 0
        self.slot_rows = self.slot_count = 0
        self.slots: list[tuple[torch.Tensor, ...]] = []
        self.same_shape: tuple | None = None  # (output shape, target shape, dtypes, devices) of the short path

    def reusable(self, layout: Layout, capacity: int) -> bool:
        return layout.key == self.key and self.buffers[0].shape[0] >= capacity

    def begin(self, size: int, capacity: int) -> None:
        """Start a group (empty) whose first batch has ``size`` rows: its slots are ``size`` rows each."""
        self.capacity, self.slot_count = capacity, capacity // size
        if size != self.slot_rows:
            self.slot_rows = size
            self.slots = [buffer.split(size) for buffer in self.buffers]
        if self.templates == (None, None):  # a tensor output and a tensor target
            out, tgt = self.buffers
            self.same_shape = ((size, *out.shape[1:]), (size, *tgt.shape[1:]), out.dtype, tgt.dtype, out.device, tgt.device)

    def add_same_shape(self, output: Any, target: Any) -> bool:
        """The short path: a tensor output and target of the slots' shapes go into the next slot.
        False, and nothing done, for any other batch (:meth:`add` takes those)."""
        if type(output) is not torch.Tensor or type(target) is not torch.Tensor or self.same_shape is None:
            return False
        if (output.shape, target.shape, output.dtype, target.dtype, output.device, target.device) != self.same_shape:
            return False
        slot = self.batches
        if slot >= self.slot_count or self.rows != slot * self.slot_rows:  # slots used up, or an odd batch came before
            return False
        self.slots[0][slot].copy_(output)
        self.slots[1][slot].copy_(target)
        self.rows += self.slot_rows
        self.batches = slot + 1
        return True

    def fits(self, layout: Layout, size: int) -> bool:
        return layout.key == self.key and self.rows + size <= self.capacity

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
        """A group as it was saved mid-epoch, its slots cut as they were (equal batches: rows / batches each)."""
        output = map_tensors(state["output"], lambda t: t.to(device))
        target = map_tensors(state["target"], lambda t: t.to(device))
        rows, batches = state["rows"], state["batches"]
        layout = Layout.of(output, target, rows)
        group = cls(layout, state["capacity"])
        group.begin(rows // batches if rows % batches == 0 else rows, state["capacity"])
        group.add(layout.tensors, rows)
        group.batches = batches
        return group
