"""When the learning-rate scheduler steps: after every optimizer step, or after every epoch.

``ReduceLROnPlateau`` is fed the monitored metric (``val_loss``, else ``loss``, when nothing is
monitored). The ``lr`` logged for an epoch is the learning rate the optimizer holds at the end of
the epoch, before the epoch scheduler steps.
"""

from __future__ import annotations

from typing import Any

import torch

from base.training_state import TypedState
from utils.errors import UserError, first_line


class Schedule:
    """The LR scheduler and when it steps (after each epoch, with the monitored value for ReduceLROnPlateau, or
    after each optimizer step)."""

    def __init__(self, scheduler: Any, interval: str = "epoch"):
        if interval not in ("epoch", "step"):
            raise ValueError(f'interval must be "epoch" or "step", got {interval!r}')
        self.scheduler, self.interval = scheduler, interval
        self._state = TypedState(scheduler, "lr_scheduler")

    def after_optimizer_step(self) -> None:
        if self.scheduler is not None and self.interval == "step":
            self._step()

    def after_epoch(self, row: dict, monitored: str | None) -> None:
        if self.scheduler is None or self.interval != "epoch":
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self._step(row[monitored or ("val_loss" if "val_loss" in row else "loss")])
        else:
            self._step()

    def _step(self, *metric: float) -> None:
        try:
            self.scheduler.step(*metric)
        except (ValueError, ZeroDivisionError, IndexError, TypeError, RuntimeError) as exc:
            reason = first_line(exc)
            raise UserError(f"lr_scheduler: {type(self.scheduler).__name__} failed after {self.scheduler.last_epoch} steps ({reason}); fix lr_scheduler.args") from None

    def state_dict(self) -> dict | None:
        return self._state.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        self._state.load_state_dict(state)
