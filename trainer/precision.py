"""Numeric precision of a step: autocast, the fp16 GradScaler, backward, unscale/clip and step.

One small object that the train step and evaluation share, so that ``trainer.amp`` means the
same thing in both. ``"bf16"`` runs under autocast on CPU and CUDA; ``"fp16"`` adds a
``torch.amp.GradScaler`` (its state is part of every checkpoint). Without AMP every method is a
plain call: ``autocast()`` returns one shared ``nullcontext``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

NO_CONTEXT = contextlib.nullcontext()  # stateless, so one serves every ``with``
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Mixed precision for one run: autocast in the configured dtype and, for fp16, the GradScaler around
    backward and the optimizer step (saved in checkpoints)."""

    def __init__(self, amp: str | None, device: torch.device):
        self.device = device
        self.dtype = AMP_DTYPES.get(amp) if amp else None
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return NO_CONTEXT
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], clip_grad_norm: float | None, update: bool = True) -> None:
        """Unscale (fp16) and clip the gradients when asked, then step the optimizer (skipped by the
        scaler when fp16 gradients overflowed). ``update=False``: several optimizers step with one
        scale, which :meth:`update` then moves once (``trainer/optimizers.py``)."""
        if clip_grad_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            if update:
                self.scaler.update()
        else:
            optimizer.step()

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
