"""What an epoch accumulates between host reads: per-batch losses, and metrics computed in bulk.

Losses: each batch's loss stays on the device as it is (no kernel per batch) until the Trainer
reads the window, every ``log_step`` optimizer steps, at a checkpoint and at the end of the epoch.
The read checks every loss for NaN/inf and adds ``loss * batch_size`` to a float64 total on the
host, one batch after the other, so the total does not depend on where the reads fell: a run
resumed from a mid-epoch checkpoint sums exactly as the uninterrupted run does.

Metrics, in bulk: a metric is a mean over samples (``model/metric.py``), so its value on several
batches concatenated equals the batch-size-weighted mean of its value on each batch. Computing
accuracy and top-k batch by batch costs about ten small kernels per batch, a third of a tiny
model's step on 2 CPU cores (300 of 1,100 us measured on the MLP benchmark); here the batches'
outputs (detached) and targets are kept until the next ``log_step`` step, or until they hold
``MAX_BYTES``, and every metric runs once over all of them. A batch of another shape (the short
last batch, another sequence length) first has the kept ones measured; outputs that cannot be
concatenated (not a tensor, dict, list or tuple of tensors with one row per sample) are measured
batch by batch. The kept outputs are part of a mid-epoch checkpoint, so a resumed epoch groups batches as
the uninterrupted one did and its metrics are bit for bit the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from utils.nested import leaves, map_tensors

MAX_BYTES = 16 * 2**20
"""Outputs and targets kept for the metrics before they are computed early (per process)."""


class EpochSums:
    """Running loss and metric sums of one epoch on one process, and the batches not yet measured."""

    LOSS_CHUNK = 256  # losses kept as separate 0-dim tensors before one ``stack`` joins them

    def __init__(self, metric_ftns: dict[str, Callable], device: torch.device, sum_dtype: torch.dtype, state: dict | None = None):
        self.metric_ftns = list(metric_ftns.values())
        self.loss_chunks: list[torch.Tensor] = []
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.steps: list[int] = []
        self.outputs: list[Any] = []
        self.targets: list[torch.Tensor] = []
        self.kept_bytes = 0
        self.kept_layout: Any = None
        if state is None:
            self.loss_total, self.samples = 0.0, 0
            self.metric_sums = torch.zeros(len(self.metric_ftns), dtype=sum_dtype, device=device)
        else:
            sums = state["epoch_sums"]
            self.loss_total, self.samples = float(sums[0]), state["epoch_samples"]
            self.metric_sums = sums[1:].to(device=device, dtype=sum_dtype)
            kept = state.get("metric_batches") or {"outputs": [], "targets": []}
            for output, target in zip(kept["outputs"], kept["targets"]):
                self._keep(map_tensors(output, lambda t: t.to(device)), target.to(device), len(target))

    def add(self, loss: torch.Tensor, output: Any, target: Any, step: int) -> None:
        """One batch: its loss (a 0-dim tensor), the model's output and the target; ``step`` names it in errors."""
        batch_size = target.shape[0] if isinstance(target, torch.Tensor) else len(target)
        self.losses.append(loss.detach())
        self.sizes.append(batch_size)
        self.steps.append(step)
        if len(self.losses) == self.LOSS_CHUNK:
            self.loss_chunks.append(torch.stack(self.losses).float())
            self.losses = []
        self.samples += batch_size
        if not self.metric_ftns:
            return
        output = output.detach() if isinstance(output, torch.Tensor) else map_tensors(output, torch.Tensor.detach)
        if not self._keep(output, target, batch_size):
            self.measure()
            self._measure(output, target, batch_size)

    def _keep(self, output: Any, target: Any, batch_size: int) -> bool:
        """Keep a batch for later; False if it cannot be concatenated with others."""
        if isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor):  # the common case, spelled out
            layout = output.shape, target.shape
            if not output.dim() or output.shape[0] != batch_size:
                return False
            size = output.nbytes + target.nbytes
        else:
            layout = _layout(output, batch_size), _layout(target, batch_size)
            if layout[0] is None or layout[1] is None:
                return False
            size = sum(t.nbytes for t in leaves(output)) + target.nbytes
        if self.outputs and layout != self.kept_layout:  # another batch or sequence length: measure what is kept
            self.measure()
        self.kept_layout = layout
        self.outputs.append(output)
        self.targets.append(target)
        self.kept_bytes += size
        if self.kept_bytes >= MAX_BYTES:
            self.measure()
        return True

    def measure(self) -> None:
        """Run the metrics on the kept batches, all at once, and add them to the sums."""
        if not self.outputs:
            return
        if len(self.outputs) == 1:
            output, target = self.outputs[0], self.targets[0]
        else:
            output, target = _concat(self.outputs), torch.cat(self.targets)
        self.outputs, self.targets, self.kept_bytes = [], [], 0
        self._measure(output, target, len(target))

    def _measure(self, output: Any, target: torch.Tensor, count: int) -> None:
        values = torch.stack([fn(output, target).detach() for fn in self.metric_ftns])
        self.metric_sums.add_(values, alpha=count)

    def read_losses(self) -> tuple[float | None, tuple[int, float] | None]:
        """(mean loss since the last read, (first non-finite step, its value) or None). Reads the device once."""
        if not self.sizes:
            return None, None
        parts = self.loss_chunks + ([torch.stack(self.losses).float()] if self.losses else [])
        values = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()
        sizes, steps = self.sizes, self.steps
        self.loss_chunks, self.losses, self.sizes, self.steps = [], [], [], []
        for value, size in zip(values, sizes):
            self.loss_total += value * size
        bad = next(((step, value) for step, value in zip(steps, values) if not math.isfinite(value)), None)
        return (None, bad) if bad is not None else (sum(values) / len(values), None)

    def totals(self) -> torch.Tensor:
        """``[loss sum, metric sums...]`` on the device, every batch measured; read the losses first."""
        assert not self.sizes, "read_losses() before totals(): unread losses would be missing from the sum"
        self.measure()
        loss = torch.tensor([self.loss_total], dtype=self.metric_sums.dtype, device=self.metric_sums.device)
        return torch.cat([loss, self.metric_sums])

    def state(self) -> dict:
        """This process's part of a mid-epoch checkpoint (CPU tensors); read the losses first."""
        assert not self.sizes, "read_losses() before state(): unread losses would be missing from the checkpoint"
        sums = torch.cat([torch.tensor([self.loss_total], dtype=torch.float64), self.metric_sums.detach().double().cpu()])
        kept = {"outputs": [map_tensors(o, torch.Tensor.cpu) for o in self.outputs], "targets": [t.cpu() for t in self.targets]}
        return {"epoch_sums": sums, "epoch_samples": self.samples, "metric_batches": kept}


def _layout(value: Any, batch_size: int) -> Any:
    """What must match for batches to concatenate (keys and shapes), or None if they cannot:
    ``value`` must be tensors with one row per sample, possibly in dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return value.shape if value.dim() > 0 and value.shape[0] == batch_size else None
    if isinstance(value, dict):
        items = [(key, _layout(item, batch_size)) for key, item in value.items()]
    elif type(value) in (list, tuple):
        items = [(index, _layout(item, batch_size)) for index, item in enumerate(value)]
    else:
        return None
    if not items or any(layout is None for _, layout in items):
        return None
    return type(value).__name__, tuple(items)


def _concat(outputs: list[Any]) -> Any:
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, dict):
        return {key: _concat([o[key] for o in outputs]) for key in first}
    return type(first)(_concat([o[i] for o in outputs]) for i in range(len(first)))
