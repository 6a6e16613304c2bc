"""BaseTrainer: the epoch loop, monitoring, early stopping and checkpoints.

A subclass supplies ``_train_epoch`` and ``_valid_epoch`` and names its stateful parts
(``state_parts`` / ``rank_parts``); this class runs epochs, logs each epoch's row, keeps the
monitor, and asks its checkpoint store (``utils/checkpoints/``: files or DCP snapshots, chosen
once by whoever builds the trainer) to save, link and prune checkpoints of those parts and to
restore them, so that ``-r last.pth`` continues a run bit for bit on CPU.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from base.progress import Monitor, Progress
from base.settings import TrainerSettings
from base.training_state import RngState
from logger.logger import get_logger
from logger.run_log import RunRecorder
from utils import distributed
from utils.checkpoints import Stateful, open_store, restore
from utils.signals import StopRequest


class BaseTrainer(ABC):
    """The epoch loop every Trainer shares: epochs, validation, the monitor and early stop, checkpoints of the
    stateful parts, stop signals. A subclass supplies ``_train_epoch`` and ``_valid_epoch`` and names
    its parts in ``state_parts``/``rank_parts``; to change the train step, subclass
    :class:`trainer.Trainer` instead."""

    def __init__(
        self,
        settings: TrainerSettings,
        device: torch.device,
        recorder: RunRecorder | None = None,
        stop: StopRequest | None = None,
        checkpoint_meta: dict | None = None,
        store: Any = None,
    ):
        self.settings = settings
        self.store = store or open_store("files")
        self.store.asynchronous = settings.async_save  # a snapshot store ignores it: every rank writes its shards at once
        self.device = device
        self.logger = get_logger()
        self.recorder = recorder or RunRecorder.off()
        self.checkpoint_meta = checkpoint_meta or {}
        self.progress = Progress()
        self.monitor = Monitor(settings.monitor_mode, settings.monitor_metric, settings.early_stop)
        self.stop = stop or StopRequest()
        self.stopped_by: str | None = None
        self.saved_once = False  # a checkpoint of this run exists (a resumed run starts with one)
        self.epoch_end: list[Callable[[dict], str | None]] = []
        """Called with each finished epoch's row, after its checkpoint is written (a sweep's pruner, a
        tracker); a returned reason ends training there (``ended_by``). Every rank must return the same."""
        self.ended_by: str | None = None
        self.distributed = distributed.is_distributed()

    # -- stateful parts -----------------------------------------------------------------------

    def state_parts(self) -> dict[str, Stateful]:
        """Parts every process shares, by checkpoint key; a subclass adds its own."""
        return {"progress": self.progress, "monitor": self.monitor}

    def rank_parts(self) -> dict[str, Stateful]:
        """Each process's own parts, by checkpoint key (saved under ``ranks``)."""
        return {"rng": RngState()}

    def resume(self, checkpoint: Any) -> None:
        """Continue the run ``checkpoint`` describes (checked and loaded in memory, part by part)."""
        self.store.accepts(checkpoint)
        restore(checkpoint, self.state_parts(), self.rank_parts(), distributed.world_size(), distributed.rank())
        self.saved_once = True
        reset = self.settings.early_stop_reset
        if reset or (reset is None and self.monitor.stopped_early):
            if self.monitor.bad_epochs:
                self.logger.info("early stop: the count of epochs without improvement restarts at 0 (trainer.early_stop_reset)")
            self.monitor.reset_count()

    @property
    def run(self) -> RunRecorder:
        """The run's recorder by its former name, read-only: a subclass written against ``run``
        (its ``tensorboard``, ``run_dir``) keeps working; new code uses ``self.recorder``."""
        return self.recorder

    def attach_recorder(self, recorder: RunRecorder) -> None:
        """Where logs, metrics and checkpoints go, once the run directory exists (and is locked: what a
        killed writer left half-written there is swept). A collective call."""
        self.recorder = recorder
        self.store.attach(recorder.checkpoint_dir)

    # -- the loop -----------------------------------------------------------------------------

    @property
    def epochs(self) -> range:
        return range(self.progress.start_epoch, self.settings.epochs + 1)

    def train(self) -> None:
        """Run the remaining epochs; SIGINT/SIGTERM checkpoint and stop (``stopped_by``)."""
        installed = self.stop.install() if not self.stop.installed else None
        self.store.sweep()
        self.recorder.begin()
        try:
            for epoch in self.epochs:
                if self.stop_agreed():
                    return
                train_row = self._train_epoch(epoch)
                if train_row is None:
                    return
                row = {"epoch": epoch, **train_row, **self._valid_epoch(epoch), **self._learning_rates()}
                improved = self.monitor.update(row)
                self._after_epoch(row)
                self.recorder.log_epoch(row, self.progress.global_step)
                self.save_epoch_checkpoints(epoch, improved)
                reasons = [reason for hook in self.epoch_end if (reason := hook(row))]
                if reasons:
                    self.ended_by = reasons[0]
                    self.logger.info("training ends after epoch %d: %s", epoch, self.ended_by)
                    break
                if self.monitor.should_stop:
                    self.logger.info(
                        "early stop: %s did not improve for %d epochs (best %.6g at epoch %s)",
                        self.monitor.metric,
                        self.monitor.bad_epochs,
                        self.monitor.best,
                        self.monitor.best_epoch,
                    )
                    break
        finally:
            self.store.wait()  # a stop or the run's end: the last checkpoint is on disk before anyone is told
            if installed is not None:
                self.stop.restore()
            self.recorder.close()

    def stop_agreed(self) -> bool:
        """True on every rank once any rank received a stop signal; ``stopped_by`` names the same signal
        on every rank (the highest number received: SIGTERM, a cancel, outranks SIGUSR1, a requeue)."""
        if not self.distributed and not self.stop.requested:
            return False  # the common case, asked every step: no call further down
        signum = distributed.all_reduce_max(self.stop.signum or 0)
        if signum:
            self.stopped_by = signal.Signals(signum).name
            return True
        return False

    @abstractmethod
    def _train_epoch(self, epoch: int) -> dict | None:
        """Train one epoch; return its logged values, or None when a stop signal ended it."""

    @abstractmethod
    def _valid_epoch(self, epoch: int) -> dict:
        """Validate; return ``val_``-prefixed values (empty without validation data)."""

    @abstractmethod
    def _after_epoch(self, row: dict) -> None:
        """After the epoch's row is complete (the Trainer steps an epoch scheduler here)."""

    @abstractmethod
    def _learning_rates(self) -> dict[str, Any]:
        """The learning rates logged with the epoch's row."""

    # -- checkpoints --------------------------------------------------------------------------

    @property
    def checkpoint_suffix(self) -> str:
        return self.store.suffix

    def save_last(self) -> None:
        """Write ``last`` atomically; every rank takes part."""
        mid_epoch = self.progress.batch_in_epoch > 0
        meta = {**self.checkpoint_meta, **self.recorder.checkpoint_meta()}  # the tracker runs' ids, once they exist
        self.store.save("last", meta, self.state_parts(), self.rank_parts(), mid_epoch)
        self.saved_once = True
        last = self.store.path("last")
        if last is not None and mid_epoch and distributed.is_main_process():
            self.logger.info("saved %s (epoch %d, batch %d)", last, self.progress.epoch, self.progress.batch_in_epoch)
        distributed.barrier()

    def save_epoch_checkpoints(self, epoch: int, improved: bool) -> None:
        self.progress.epoch, self.progress.batch_in_epoch = epoch, 0
        self.save_last()
        if improved:
            self.store.link("last", "best")
            if self.store.path("best") is not None:
                self.logger.info("new best %s %.6g: saved %s", self.monitor.metric, self.monitor.best, self.store.path("best"))
        period = self.settings.save_period
        if period and epoch % period == 0:
            self.store.link("last", f"epoch-{epoch}")
            for path in self.store.prune(self.settings.keep_last):
                self.logger.debug("removed old checkpoint %s", path)
