"""The concrete Trainer: train and validation epochs, and the train step in one place.

The train step (``_train_epoch``) reads top to bottom: move the batch -> autocast forward ->
loss / accumulation -> backward (through the GradScaler for fp16) -> clip -> optimizer step ->
per-step scheduler. Losses, outputs kept for the metrics and metric sums stay on the device
(``EpochSums``, ``trainer/epoch_sums.py``); the host reads losses only every ``log_step``
optimizer steps, before a checkpoint and at the end of the epoch, so the GPU is never stalled
per batch, and the metrics run once per ``log_step`` steps on all the batches since.
How a batch becomes ``(inputs, target)`` is :meth:`Evaluator.unpack_batch` (``trainer/evaluator.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import torch
from torch import nn

from base import BaseDataLoader, BaseTrainer
from logger.progress import progress_bar, progress_enabled, progress_iter
from trainer.epoch_sums import EpochSums
from trainer.evaluator import NO_CONTEXT, Evaluator
from utils import distributed
from utils.errors import NonFiniteLossError


class Trainer(BaseTrainer, Evaluator):
    def __init__(
        self,
        model: nn.Module,
        criterion: Callable,
        metric_ftns: dict[str, Callable],
        optimizer: torch.optim.Optimizer,
        config,
        device: torch.device,
        data_loader: Iterable,
        valid_data_loader: Iterable | None = None,
        lr_scheduler: Any = None,
        run=None,
        checkpoint: dict | None = None,
    ):
        super().__init__(model, criterion, metric_ftns, optimizer, config, device, lr_scheduler, run, checkpoint)
        cfg = config.trainer
        self.data_loader = data_loader
        self.valid_data_loader = valid_data_loader
        self.accumulate = cfg["accumulate_steps"]
        self.clip_grad_norm = cfg["clip_grad_norm"]
        self.log_step = cfg["log_step"]
        self.save_every = cfg["save_every_n_steps"]
        self.channels_last = cfg["channels_last"]
        self.len_epoch = cfg["len_epoch"]
        self.overfit = cfg["overfit_batches"]
        self.log_images = cfg["log_images"]
        self.log_histograms = cfg["log_histograms"]
        self.show_progress = progress_enabled(cfg["progress_bar"], distributed.rank())
        self.trainable = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.eval_model = self.raw_model if self.distributed else self.model
        wrapped = getattr(self.model, "_orig_mod", self.model)  # under torch.compile, the DDP module inside
        self.ddp_model = wrapped if isinstance(wrapped, nn.parallel.DistributedDataParallel) else None
        if self.channels_last:
            self.raw_model.to(memory_format=torch.channels_last)
        if isinstance(data_loader, BaseDataLoader):
            data_loader.set_seed(config["seed"])
            data_loader.to_device(device)
            if self.overfit:
                data_loader.sampler.shuffle = False
        if isinstance(valid_data_loader, BaseDataLoader):
            valid_data_loader.to_device(device)
        self.batches_per_epoch = self._count_batches(cfg["limit_batches"])
        self.valid_limit = cfg["limit_batches"] or None

    def _count_batches(self, limit: int) -> int:
        per_pass = self.data_loader.batches_per_pass() if isinstance(self.data_loader, BaseDataLoader) else len(self.data_loader)
        if self.overfit:
            count = min(self.overfit, per_pass)
        else:
            count = self.len_epoch or per_pass
        if limit:
            count = min(count, limit)
        if count < 1:
            raise self.config.error(
                "data_loader.args.batch_size", "the training split yields no batch; lower batch_size or turn off drop_last"
            )
        return count

    # -- training ---------------------------------------------------------------------------

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[Any]:
        """Batches ``start..batches_per_epoch`` of ``epoch``; each pass's order depends on seed and pass only."""
        loader = self.data_loader
        remaining = self.batches_per_epoch - start
        if not isinstance(loader, BaseDataLoader):
            yield from islice(loader, start, self.batches_per_epoch)
            return
        if self.overfit:
            loader.set_epoch(0, start)
            yield from islice(loader, remaining)
            return
        if not self.len_epoch:
            loader.set_epoch(epoch - 1, start)
            yield from islice(loader, remaining)
            return
        per_pass = loader.batches_per_pass()
        position = (epoch - 1) * self.len_epoch + start
        while remaining > 0:
            pass_index, offset = divmod(position, per_pass)
            loader.set_epoch(pass_index, offset)
            for batch in islice(loader, min(remaining, per_pass - offset)):
                yield batch
                remaining -= 1
                position += 1

    def _train_epoch(self, epoch: int) -> dict | None:
        self.model.train()
        start, total = self.resume_batch, self.batches_per_epoch
        sums = EpochSums(self.metric_ftns, self.device, self.sum_dtype, self.resume_state)
        self.resume_batch, self.resume_state = 0, None
        if start:
            self.logger.info("resuming epoch %d at batch %s of %s", epoch, f"{start:,}", f"{total:,}")
        bar = progress_bar(total, f"epoch {epoch}", self.show_progress, initial=start)
        started, samples_at_start = time.perf_counter(), sums.samples
        first_inputs = None

        for batch_idx, batch in enumerate(self._epoch_batches(epoch, start), start=start):
            inputs, target = self.prepare(batch)
            if batch_idx == start and self.log_images and isinstance(inputs, torch.Tensor):
                first_inputs = inputs  # logged at the epoch's last step, with the histograms
            # Accumulation groups are fixed by position, so a resumed epoch groups batches as before.
            group_start = batch_idx - batch_idx % self.accumulate
            group_size = min(self.accumulate, total - group_start)
            last_in_group = batch_idx + 1 == group_start + group_size

            sync = NO_CONTEXT if last_in_group or self.ddp_model is None else self.ddp_model.no_sync()
            with sync:
                with self._autocast():
                    output = self.run_model(self.model, inputs)
                    loss = self.criterion(output, target)
                scaled = loss / group_size if group_size > 1 else loss
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            sums.add(loss, output, target, self.global_step + 1)

            if last_in_group:
                if self.clip_grad_norm is not None:
                    if self.scaler is not None:
                        self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.trainable, self.clip_grad_norm)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.lr_scheduler is not None and self.scheduler_interval == "step":
                    self.lr_scheduler.step()
                self.global_step += 1

                if self.global_step % self.log_step == 0:
                    self._log_window(sums, epoch, batch_idx + 1, total, sums.samples - samples_at_start, started, bar)
                    sums.measure()
                if self.save_every and self.global_step % self.save_every == 0:
                    self._check_losses(sums, epoch)
                    self.save_last(batch_idx + 1, sums.state())
                if self.stop_agreed():
                    self._check_losses(sums, epoch)
                    self.save_last(batch_idx + 1, sums.state())
                    bar.close()
                    return None
            bar.update()
        bar.close()
        self._check_losses(sums, epoch)
        elapsed = time.perf_counter() - started
        log = self.reduce_sums(sums.totals(), sums.samples)
        # On the training device: NCCL reduces CUDA tensors only.
        seen = distributed.all_reduce_sum(torch.tensor([float(sums.samples - samples_at_start)], device=self.device))
        log["samples_per_sec"] = round(float(seen.item()) / max(elapsed, 1e-9), 2)
        if self.log_histograms:
            self.run.tensorboard.add_histograms(self.raw_model, self.global_step)
        if first_inputs is not None:
            self.run.tensorboard.add_images("train/inputs", first_inputs, self.global_step)
        return log

    def _check_losses(self, sums: EpochSums, epoch: int) -> float | None:
        """Mean loss of the batches since the last check; stops the run if any of them was not finite."""
        mean, bad = sums.read_losses()
        if bad is not None:
            step, value = bad
            where = self.run.checkpoint_dir or "the run directory"
            raise NonFiniteLossError(
                f"non-finite loss ({value}) in epoch {epoch} at optimizer step {step}; training stopped and the "
                f"last good checkpoint in {where} is intact; lower optimizer.args.lr, set trainer.clip_grad_norm, or check the data"
            )
        return mean

    def _log_window(self, sums: EpochSums, epoch: int, batch: int, total: int, samples: int, started: float, bar) -> None:
        mean = self._check_losses(sums, epoch)
        rate = samples * distributed.world_size() / max(time.perf_counter() - started, 1e-9)
        self.run.tensorboard.add_scalars({"train/step_loss": mean, "train/step_samples_per_sec": rate}, self.global_step)
        if self.show_progress:
            bar.set_postfix(loss=f"{mean:.4f}", samples_s=f"{rate:,.0f}")
        else:
            self.logger.info("epoch %d [%d/%d] step %d  loss %.6g  %.0f samples/s", epoch, batch, total, self.global_step, mean, rate)

    # -- validation -------------------------------------------------------------------------

    def _valid_epoch(self, epoch: int) -> dict:
        if self.overfit:
            batches: Iterable | None = self._epoch_batches(1, 0)
        else:
            batches = self.valid_data_loader
            if batches is not None and self.valid_limit:
                batches = islice(batches, self.valid_limit)
        if batches is None:
            return {}
        sums, count = self.evaluate_sums(progress_iter(batches, f"valid {epoch}", self.show_progress))
        return self.reduce_sums(sums, count, prefix="val_")
