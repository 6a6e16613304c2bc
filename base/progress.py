"""Two stateful parts of the loop: where training is (:class:`Progress`) and how the monitored
metric has done (:class:`Monitor`). Each saves and restores itself (``state_dict`` /
``load_state_dict``), like every part a checkpoint is assembled from (``base/training_state.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from utils.errors import UserError


@dataclass
class Progress:
    """Loop counters. ``epoch`` is the epoch in progress (1-based); it is complete when
    ``batch_in_epoch`` is 0, otherwise that many of its batches are trained."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0

    @property
    def start_epoch(self) -> int:
        """The epoch training continues with."""
        return self.epoch if self.batch_in_epoch else self.epoch + 1

    @property
    def completed_epochs(self) -> int:
        return self.epoch - 1 if self.batch_in_epoch else self.epoch

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_in_epoch, self.global_step = state["epoch"], state["batch_in_epoch"], state["global_step"]


class Monitor:
    """Best value of the monitored metric, and epochs without improvement (for early stop).

    Values are compared exactly as they are logged (Python floats, i.e. float64, the values
    written to ``metrics.jsonl``); a tie is not an improvement, and NaN never is.
    """

    def __init__(self, mode: str, metric: str | None, patience: int = 0):
        self.mode, self.metric, self.patience = mode, metric, patience
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped_early = False

    def update(self, row: dict) -> bool:
        """Whether the monitored metric improved in this epoch's ``row``."""
        if self.mode == "off":
            return False
        value = row.get(self.metric)
        if not isinstance(value, (int, float)):
            raise UserError(f"trainer.monitor: {self.metric!r} is not a number this epoch ({value!r}); logged: {sorted(row)}")
        better = value < self.best if self.mode == "min" else value > self.best
        if better and math.isfinite(value):
            self.best, self.best_epoch, self.bad_epochs = value, row["epoch"], 0
        else:
            self.bad_epochs += 1
        # Known before the epoch's checkpoint is written, so a resume can tell that the run stopped early.
        self.stopped_early = bool(self.patience) and self.bad_epochs >= self.patience
        return self.bad_epochs == 0

    @property
    def should_stop(self) -> bool:
        """Early stop: ``patience`` epochs in a row without improvement (never when patience is 0)."""
        return self.stopped_early

    def reset_count(self) -> None:
        self.bad_epochs, self.stopped_early = 0, False

    def state_dict(self) -> dict:
        return {
            "monitor": f"{self.mode} {self.metric}" if self.metric else self.mode,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved record; a run resumed with another ``trainer.monitor`` starts a new one."""
        if state["monitor"] != self.state_dict()["monitor"]:
            return
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs, self.stopped_early = state["bad_epochs"], state["stopped_early"]
