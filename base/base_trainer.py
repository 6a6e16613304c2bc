"""BaseTrainer: the epoch loop, monitoring, early stopping and the checkpoint contract.

A subclass supplies ``_train_epoch`` and ``_valid_epoch`` (see ``trainer/trainer.py``). This
class owns everything that must survive a restart, so that ``-r last.pth`` continues a run bit
for bit on CPU: model, optimizer, scheduler and scaler states, loop counters, the monitor, and
every rank's RNG state, plus, inside an epoch, the batch position and the running metric sums.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from logger.logger import get_logger
from logger.run_log import RunLog
from utils import distributed
from utils.checkpoint import FORMAT, VERSION, clean_state_dict, link_atomic, prune_epoch_checkpoints, remove_stale_temporaries, save_atomic
from utils.config import Config
from utils.errors import UserError
from utils.seed import get_rng_state, set_rng_state
from utils.signals import StopRequest


class BaseTrainer(ABC):
    def __init__(
        self,
        model: nn.Module,
        criterion: Callable,
        metric_ftns: dict[str, Callable],
        optimizer: torch.optim.Optimizer,
        config: Config,
        device: torch.device,
        lr_scheduler: Any = None,
        run: RunLog | None = None,
        checkpoint: dict | None = None,
    ):
        self.config = config
        cfg = config.trainer
        self.logger = get_logger()
        self.device = device
        self.raw_model = model
        self.distributed = distributed.is_distributed()
        self.model = self._wrap_model(model, cfg)
        self.criterion = criterion
        self.metric_ftns = metric_ftns
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.scheduler_interval = (config["lr_scheduler"] or {}).get("interval", "epoch")
        self.run = run or RunLog(None, config.to_dict())
        self.epochs = cfg["epochs"]
        self.save_period = cfg["save_period"]
        self.keep_last = cfg["keep_last"]
        self.early_stop = cfg["early_stop"]
        self.monitor_mode, self.monitor_metric = config.monitor()
        self.monitor_best = math.inf if self.monitor_mode == "min" else -math.inf
        self.not_improved_count = 0
        self.best_epoch: int | None = None
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["amp"])
        self.scaler = torch.amp.GradScaler(device.type) if cfg["amp"] == "fp16" else None
        self.stop = StopRequest()
        self.stopped_by: str | None = None
        self.start_epoch = 1
        self.epoch = 1
        self.global_step = 0
        self.resume_batch = 0
        self.resume_state: dict | None = None  # the unfinished epoch's sums (see trainer/epoch_sums.py)
        self._resume_rng: dict | None = None
        if checkpoint is not None:
            self._restore(checkpoint)
        if self.run.checkpoint_dir is not None:
            remove_stale_temporaries(self.run.checkpoint_dir)

    # -- set-up -----------------------------------------------------------------------------

    def _wrap_model(self, model: nn.Module, cfg: dict) -> nn.Module:
        """DDP when launched by torchrun (after optional SyncBatchNorm), then optional torch.compile."""
        if self.distributed:
            if cfg["sync_batchnorm"]:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.raw_model = model
            device_ids = [self.device] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=cfg["find_unused_parameters"])
        if cfg["compile"]:
            model = torch.compile(model)
        return model

    def _restore(self, state: dict) -> None:
        """Continue the run a checkpoint describes (everything but the weights, loaded by the caller)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = state["global_step"]
        self.monitor_best = state["monitor_best"]
        self.not_improved_count = state["not_improved_count"]
        self.best_epoch = state.get("best_epoch")
        same_world = state["world_size"] == distributed.world_size()
        rank_state = state["ranks"][distributed.rank() if same_world else 0]
        if state["batch_in_epoch"]:
            if not same_world:
                raise UserError(
                    f"checkpoint: written mid-epoch by {state['world_size']} process(es); resume it with the same "
                    f"number of processes, or from an epoch-end checkpoint (epoch-N.pth)"
                )
            self.start_epoch = state["epoch"]
            self.resume_batch = state["batch_in_epoch"]
            self.resume_state = {key: rank_state.get(key) for key in ("epoch_sums", "epoch_samples", "metric_batches")}
        else:
            self.start_epoch = state["epoch"] + 1
        if not same_world:
            self.logger.warning(
                "checkpoint written by %d process(es), resuming with %d: data order is kept, RNG streams are not",
                state["world_size"],
                distributed.world_size(),
            )
        self._resume_rng = rank_state["rng"]

    # -- the loop ---------------------------------------------------------------------------

    def train(self) -> None:
        """Run epochs ``start_epoch..epochs``; SIGINT/SIGTERM checkpoint and stop (``stopped_by``)."""
        self.stop.install()
        try:
            if self._resume_rng is not None:
                set_rng_state(self._resume_rng)
            for epoch in range(self.start_epoch, self.epochs + 1):
                self.epoch = epoch
                train_log = self._train_epoch(epoch)
                if train_log is None:
                    return
                row = {"epoch": epoch, **train_log, **self._valid_epoch(epoch), **self._learning_rates()}
                improved = self._update_monitor(row)
                self._step_epoch_scheduler(row)
                self.run.log_epoch(row, self.global_step)
                self._save_epoch_checkpoints(epoch, improved)
                if self.early_stop and self.not_improved_count >= self.early_stop:
                    self.logger.info(
                        "early stop: %s did not improve for %d epochs (best %.6g at epoch %s)",
                        self.monitor_metric,
                        self.early_stop,
                        self.monitor_best,
                        self.best_epoch,
                    )
                    break
                if self.stop_agreed():
                    return
        finally:
            self.stop.restore()
            self.run.close()

    def stop_agreed(self) -> bool:
        """True on every rank once any rank received SIGINT/SIGTERM."""
        if not self.distributed and not self.stop.requested:
            return False  # the common case, asked every step: no call further down
        if distributed.any_process(self.stop.requested):
            self.stopped_by = self.stop.name or "SIGTERM"
            return True
        return False

    @abstractmethod
    def _train_epoch(self, epoch: int) -> dict | None:
        """Train one epoch; return its logged values, or None when a stop signal ended it."""

    @abstractmethod
    def _valid_epoch(self, epoch: int) -> dict:
        """Validate; return ``val_``-prefixed values (empty without validation data)."""

    def _learning_rates(self) -> dict:
        groups = self.optimizer.param_groups
        rates = {"lr": groups[0]["lr"]}
        rates.update({f"lr_group{i}": group["lr"] for i, group in enumerate(groups) if i})
        return rates

    def _update_monitor(self, row: dict) -> bool:
        """Whether the monitored metric improved; counts epochs without improvement for early stop."""
        if self.monitor_mode == "off":
            return False
        value = row.get(self.monitor_metric)
        if value is None:
            raise UserError(f"trainer.monitor: {self.monitor_metric!r} was not produced this epoch (logged: {sorted(row)})")
        better = value < self.monitor_best if self.monitor_mode == "min" else value > self.monitor_best
        if better and math.isfinite(value):
            self.monitor_best, self.best_epoch, self.not_improved_count = value, row["epoch"], 0
            return True
        self.not_improved_count += 1
        return False

    def _step_epoch_scheduler(self, row: dict) -> None:
        if self.lr_scheduler is None or self.scheduler_interval != "epoch":
            return
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            metric = self.monitor_metric or ("val_loss" if "val_loss" in row else "loss")
            self.lr_scheduler.step(row[metric])
        else:
            self.lr_scheduler.step()

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint_state(self, batch_in_epoch: int = 0, epoch_state: dict | None = None) -> dict:
        """The checkpoint dict (see ``utils/checkpoint.py``); a collective call under DDP.

        ``epoch_state``: this process's sums of the unfinished epoch (``EpochSums.state()``), mid-epoch only.
        """
        rank_state = {"rng": get_rng_state(), **(epoch_state or {"epoch_sums": None, "epoch_samples": 0})}
        return {
            "format": FORMAT,
            "version": VERSION,
            "arch": self.config["arch"]["type"],
            "model": clean_state_dict(self.raw_model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "batch_in_epoch": batch_in_epoch,
            "global_step": self.global_step,
            "monitor_best": self.monitor_best,
            "not_improved_count": self.not_improved_count,
            "best_epoch": self.best_epoch,
            "ranks": distributed.gather_objects(rank_state),
            "world_size": distributed.world_size(),
            "config": self.config.to_dict(),
        }

    def save_last(self, batch_in_epoch: int = 0, epoch_state: dict | None = None) -> None:
        """Write ``last.pth`` atomically on rank 0; every rank takes part and waits for the write."""
        state = self.checkpoint_state(batch_in_epoch, epoch_state)
        folder = self.run.checkpoint_dir
        if folder is not None:
            save_atomic(state, folder / "last.pth")
            if batch_in_epoch:
                self.logger.info("saved %s (epoch %d, batch %d)", folder / "last.pth", self.epoch, batch_in_epoch)
        distributed.barrier()

    def _save_epoch_checkpoints(self, epoch: int, improved: bool) -> None:
        self.save_last()
        folder = self.run.checkpoint_dir
        if folder is None:
            return
        last = folder / "last.pth"
        if improved:
            link_atomic(last, folder / "best.pth")
            self.logger.info("new best %s %.6g: saved %s", self.monitor_metric, self.monitor_best, folder / "best.pth")
        if self.save_period and epoch % self.save_period == 0:
            link_atomic(last, folder / f"epoch-{epoch}.pth")
            for path in prune_epoch_checkpoints(folder, self.keep_last):
                self.logger.debug("removed old checkpoint %s", path)
