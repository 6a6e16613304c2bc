"""Scalars a step logs with ``self.log(name, value)``, averaged over the epoch like the loss.

A ``training_step`` or ``validation_step`` may call ``self.log("kl", kl)`` (a 0-dim tensor or a
number); the engine weights the value by the batch's samples (``trainer/batches.py``), sums on
the device and divides once at the end of the epoch, over every process (sums and counts), so
the logged value is the per-sample mean the loss is. It goes into the epoch's row under
``name`` (``val_<name>`` from validation), hence into ``metrics.jsonl``, TensorBoard and the
trackers, and can be monitored. A name logged twice in one step counts once, with its last
value; a name logged on some batches only is the mean over those batches' samples. A mid-epoch
checkpoint keeps the sums, so a resumed epoch logs what the uninterrupted one would have.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from utils import distributed
from utils.errors import UserError

RESERVED = ("loss", "epoch", "samples_per_sec", "data_wait")


class LoggedValues:
    """One pass's logged values: ``log`` during a step, ``commit(samples)`` after it."""

    def __init__(self, device: torch.device, taken: tuple[str, ...] = ()):
        self.device = device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.taken = set(RESERVED) | set(taken)  # names the row already has (the metrics')
        self.pending: dict[str, Any] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.samples: dict[str, int] = {}

    def log(self, name: str, value: Any) -> None:
        if not isinstance(name, str) or not name or name in self.taken or name.startswith(("val_", "lr")):
            raise UserError(
                f"self.log: {name!r} cannot name a logged value (the row has 'loss', the metrics {sorted(self.taken - set(RESERVED))}, "
                f"epoch, samples_per_sec, data_wait, lr*, val_*); choose another name"
            )
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise UserError(f"self.log: {name!r} is a tensor of shape {tuple(value.shape)}; log one number per step (e.g. its .mean())")
            value = value.detach().reshape(())
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"self.log: {name!r} is a {type(value).__name__}; log a number or a one-element tensor")
        self.pending[name] = value

    def commit(self, samples: int) -> None:
        """The step's values, each weighted by the batch's ``samples``."""
        for name, value in self.pending.items():
            total = self.sums.get(name)
            if total is None:
                total = self.sums[name] = torch.zeros((), dtype=self.dtype, device=self.device)
                self.samples[name] = 0
            if isinstance(value, torch.Tensor):
                total.add_(value.to(device=self.device, dtype=self.dtype), alpha=samples)
            else:
                total.add_(float(value) * samples)
            self.samples[name] += samples
        self.pending.clear()

    def compute(self) -> dict[str, float]:
        """The per-sample means over every process (a collective under DDP: every process calls it)."""
        names = sorted(self.sums)
        if distributed.is_distributed():
            names = sorted({name for each in distributed.gather_objects(names) for name in each})
        if not names:
            return {}
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        sums = torch.stack([self.sums.get(name, zero) for name in names])
        counts = torch.tensor([float(self.samples.get(name, 0)) for name in names], dtype=self.dtype, device=self.device)
        reduced = distributed.all_reduce_sum(torch.cat([sums, counts])).tolist()
        return {name: total / count if count else math.nan for name, total, count in zip(names, reduced, reduced[len(names) :])}

    def reset(self) -> None:
        self.pending.clear()
        self.sums.clear()
        self.samples.clear()

    def state_dict(self) -> dict:
        return {name: [float(total), self.samples[name]] for name, total in self.sums.items()}

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        for name, (total, samples) in state.items():
            self.sums[name] = torch.tensor(total, dtype=self.dtype, device=self.device)
            self.samples[name] = samples
