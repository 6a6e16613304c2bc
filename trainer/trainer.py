"""The concrete Trainer: the train step in one place, and validation through its Evaluator.

**Your step.** What one batch costs is :meth:`Trainer.training_step` (and
:meth:`Trainer.validation_step`): ``(inputs, target) -> (loss, output)``, by default the model's
output and the configured loss. Override either in a subclass named by ``trainer.type``
(``package.module:Name``) to change it: a loss weighted by the epoch, a second forward pass, a
loss of several outputs. ``self.epoch`` (1-based, the epoch in progress), ``self.global_step``
(optimizer steps done), ``self.forward(inputs)`` (the model as this phase runs it) and
``self.loss(output, target, inputs)`` are at hand, and ``self.log(name, value)`` logs a scalar
averaged over the epoch like the loss; :meth:`Trainer.predict_step` is what ``predict.py`` writes
(default: the forward). Everything around a step is the engine's and
keeps working: autocast (the step runs inside it), accumulation, backward, clipping, the
optimizer and scheduler, DDP/FSDP, EMA, metrics (on the returned ``output``), checkpoints and
exact mid-epoch resume.

**Several optimizers** (``optimizer`` a mapping of names, ``trainer/optimizers.py``): the step returns
``{name: loss}`` and ``self.stepping`` names the optimizers that step now; a subclass with
``automatic_optimization = False`` does backward and steps itself (``trainer/manual.py``). Both
train without DDP's wrapper; ``docs/optimizers.md``.

``_train_epoch`` reads top to bottom: take the next batch (timing the wait) -> move and split it
-> autocast ``training_step`` -> accumulation -> backward -> unscale, clip, optimizer step ->
per-step scheduler -> EMA. Losses and metric state stay on the device (``trainer/metrics.py``);
the host reads losses only every ``log_step`` optimizer steps, before a checkpoint and at the end
of the epoch, so the GPU is never stalled per batch.

The parts it holds: the prepared model (``trainer/parallel.py``), the precision helper
(``trainer/precision.py``), the learning-rate schedule, the training metrics, the evaluator for
validation (``trainer/evaluator.py``), the data source (its ``epoch_batches`` owns the data
order, ``dataflow/epochs.py``), and, when on, the EMA weights (``trainer/ema.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from base import BaseTrainer
from base.settings import TrainerSettings
from base.training_state import DataPosition, ModelWeights, OptimizerState
from dataflow.epochs import epochs_of
from logger.logger import get_logger
from logger.progress import progress_bar, progress_enabled
from trainer.batches import BatchReader, next_batch, run_model
from trainer.ema import EMA
from trainer.evaluator import Evaluator
from trainer.loss import Loss
from trainer.manual import ManualSteps
from trainer.metrics import LossTracker, MetricSet
from trainer.optimizers import ONE, OptimizerSet, OptimizerStates, Schedules, sum_losses
from trainer.parallel import PreparedModel, check_replicas, prepare_model
from trainer.precision import NO_CONTEXT, Precision
from trainer.schedule import Schedule
from trainer.step_log import LoggedValues
from utils import distributed
from utils.checkpoints import Stateful, open_store
from utils.errors import NonFiniteLossError, UserError
from utils.nested import map_tensors

DATA_WAIT_HINT = 0.5
_ONE_STEPPING = frozenset({ONE})


class Trainer(BaseTrainer):
    """The training loop of a config-built run, and the class to subclass to change the step: override
    ``training_step`` and ``validation_step`` (each returns ``(loss, output)``), name your class in
    ``trainer.type``; autocast, accumulation, clipping, DDP/FSDP, EMA, metrics, checkpoints and exact
    resume stay the engine's."""

    automatic_optimization = True
    """False in a subclass whose step calls ``self.backward`` and steps ``self.optimizers`` itself (``trainer/manual.py``)."""

    def __init__(
        self,
        model: nn.Module | PreparedModel,
        criterion: Callable,
        optimizer: torch.optim.Optimizer | OptimizerSet,
        settings: TrainerSettings,
        device: torch.device,
        data_loader: Any,
        valid_data_loader: Any = None,
        metrics: dict[str, Any] | None = None,
        lr_scheduler: Any = None,
        scheduler_interval: str = "epoch",
        **base: Any,
    ):
        several = isinstance(optimizer, OptimizerSet)
        manual = not type(self).automatic_optimization
        self.model = prepare_model(model, settings, device, wrap=not (several or manual))
        if (several or manual) and self.model.ddp is not None:
            raise ValueError("several optimizers and manual optimization train a model without DDP's wrapper: prepare it with prepare_model(..., wrap=False)")
        super().__init__(settings, device, store=open_store(self.model.checkpoint_store), **base)
        self.loss = Loss(criterion, device)
        self.criterion = self.loss.criterion
        self._forward_module: Any = self.model.train_forward  # what self.forward calls in this phase
        self.optimizer_set = optimizer if several else None
        """The named optimizers when the config declares several (``trainer/optimizers.py``), else None."""
        self.optimizers: dict[str, torch.optim.Optimizer] = dict(optimizer.optimizers) if several else {ONE: optimizer}
        """Every optimizer by name (``{"optimizer": opt}`` with one)."""
        self.optimizer = None if several else optimizer
        self.trainable = [p for p in self.model.module.parameters() if p.requires_grad]
        if several:
            self.schedule = lr_scheduler if isinstance(lr_scheduler, Schedules) else Schedules({}, {})
            if lr_scheduler is not None and not isinstance(lr_scheduler, Schedules):
                raise ValueError("several optimizers take a Schedules of their schedulers by name (trainer.optimizers.Schedules)")
        else:
            self.schedule = Schedule(lr_scheduler, scheduler_interval)
        self.precision = Precision(settings.amp, device)
        self.real_optimizers = dict(self.optimizers)
        """Every optimizer itself, by name (``self.optimizers`` holds the manual mode's wrappers)."""
        self.manual: ManualSteps | None = None
        if manual:  # trainer/manual.py: the step's self.optimizers are wrappers that respect accumulation
            params = optimizer.params if several else {ONE: self.trainable}
            self.manual = ManualSteps(self.optimizers, params, self.precision, settings.clip_grad_norm)
            self.optimizers = dict(self.manual.optimizers)
        self.read_batch = BatchReader(device, data_loader, settings.target_key, settings.channels_last)
        self.data = epochs_of(data_loader)
        self.data.plan_epochs(device, settings.len_epoch, settings.overfit_batches, settings.limit_batches)
        debugging = settings.limit_batches or settings.overfit_batches  # a short epoch on purpose: one step then
        if settings.accumulate_steps > self.data.batches_per_epoch and not debugging:
            raise UserError(
                f"trainer.accumulate_steps: {settings.accumulate_steps} micro-batches per step, more than the "
                f"{self.data.batches_per_epoch} batches of an epoch; lower it"
            )
        self.train_metrics = MetricSet(metrics, device)
        self.losses = LossTracker()
        self.train_logged = LoggedValues(device, tuple(self.train_metrics.names))
        self.valid_logged = LoggedValues(device, tuple(self.train_metrics.names))
        self._logged = self.train_logged  # where self.log goes in this phase
        self.ema = EMA(self.model.module, settings.ema_decay, settings.ema_warmup) if settings.ema_decay else None
        self.valid_data = None
        if valid_data_loader is not None and not settings.overfit_batches:
            self.valid_data = epochs_of(valid_data_loader)
            self.valid_data.plan_epochs(device, limit_batches=settings.limit_batches)
        self.show_progress = progress_enabled(settings.progress_bar, distributed.rank())
        valid_metrics = self.train_metrics.fresh()
        self.evaluator = Evaluator(
            self.model.eval_forward,
            self.loss,
            valid_metrics,
            device,
            settings.amp,
            self.read_batch,
            self.show_progress,
            step=self.validation_step,
            logged=self.valid_logged,
        )
        source = self.data if settings.overfit_batches else self.valid_data
        # When a forward is a collective (FSDP gathers weights), every process evaluates as many batches.
        self.valid_steps = distributed.all_reduce_max(source.batches_per_epoch) if self.model.collective_forward and source is not None else None
        self.data_wait_hinted = False
        self.replicas_checked = False  # DDP's replicas compared after the first step (trainer/parallel.py)
        self.in_preflight = False
        """True while the pre-flight batch runs the step (``trainer/preflight.py``); what the step changes is put back after it."""
        self.epoch_samples = 0
        """Samples the last epoch trained on, over every process (since the resume, for a resumed epoch):
        ``samples_per_sec`` is this over the epoch's time."""
        self.profiler: Any = None
        self.profile_from: int | None = None  # the step this process began profiling at

    @property
    def batches_per_epoch(self) -> int:
        return self.data.batches_per_epoch

    # -- the steps: override these in a subclass ------------------------------------------------

    def training_step(self, inputs: Any, target: Any) -> tuple[torch.Tensor, Any]:
        """One micro-batch: ``(loss, output)``. Runs under autocast; the engine scales the loss for
        accumulation and does backward and the optimizer step. ``output`` feeds the training
        metrics (return the model's output, or what your metrics take)."""
        output = self.forward(inputs)
        return self.loss(output, target, inputs), output

    def validation_step(self, inputs: Any, target: Any) -> tuple[torch.Tensor, Any]:
        """One validation (and ``test.py``) batch: ``(loss, output)``, under ``torch.no_grad`` and autocast,
        with the EMA weights in the model when they are used for evaluation."""
        output = self.forward(inputs)
        return self.loss(output, target, inputs), output

    def forward(self, inputs: Any) -> Any:
        """The model's output for ``inputs`` as this phase runs it: through DDP/FSDP/compile while
        training, the module itself (EMA weights in) while validating. Dict inputs become keyword
        arguments, tuples positional ones."""
        return run_model(self._forward_module, inputs)

    def log(self, name: str, value: Any) -> None:
        """Log a scalar from a step (a term of the loss, say): averaged per sample over the epoch like
        the loss, into the epoch's row as ``name`` (``val_<name>`` from validation), so into
        ``metrics.jsonl``, TensorBoard and the trackers (``trainer/step_log.py``)."""
        self._logged.log(name, value)

    def predict_step(self, inputs: Any) -> Any:
        """One batch of ``predict.py``: what is written for ``inputs`` (default: the model's output).
        Return a tensor or a dict of tensors with one row per sample: an argmax mask, generated
        samples. Runs under ``torch.no_grad`` and autocast, with the weights ``test.py`` uses."""
        return self.forward(inputs)

    def predict(self, inputs: Any) -> Any:
        """:meth:`predict_step` with the evaluation forward (what ``predict.py`` calls)."""
        self._forward_module = self.model.eval_forward
        try:
            return self.predict_step(inputs)
        finally:
            self._forward_module = self.model.train_forward

    @property
    def stepping(self) -> frozenset[str]:
        """The names of the optimizers that step at this engine step (``optimizer.<name>.every``), so a
        step can skip the work of the others; with one optimizer always ``{"optimizer"}``."""
        if self.optimizer_set is None:
            return _ONE_STEPPING
        return self.optimizer_set.stepping_at(self.progress.global_step)

    @property
    def epoch(self) -> int:
        """The epoch in progress, 1-based (during validation: the epoch being validated)."""
        return self.progress.epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps done so far in the run (a resumed run continues the count)."""
        return self.progress.global_step

    def evaluate(self, batches: Any, prefix: str = "", desc: str = "evaluate", total: int | None = None, steps: int | None = None) -> dict:
        """Loss and metrics of :meth:`validation_step` over ``batches`` (validation, and ``test.py``)."""
        self._forward_module, self._logged = self.model.eval_forward, self.valid_logged
        try:
            with self._evaluation_weights():
                return self.evaluator.evaluate(batches, prefix, desc, total, steps)
        finally:
            self._forward_module, self._logged = self.model.train_forward, self.train_logged

    def state_parts(self) -> dict[str, Stateful]:
        return {
            **super().state_parts(),
            "model": ModelWeights(self.model.module),
            "optimizer": OptimizerState(self.optimizer, self.model.module) if self.optimizer_set is None else OptimizerStates(self.real_optimizers),
            "lr_scheduler": self.schedule,
            "precision": self.precision,
            "ema": self.ema or _NoEMA(),
        }

    def rank_parts(self) -> dict[str, Stateful]:
        losses = _LossesAndLogged(self.losses, self.train_logged)
        return {**super().rank_parts(), "data": DataPosition(self.data, self.progress), "losses": losses, "train_metrics": self.train_metrics}

    # -- training -------------------------------------------------------------------------------

    def train(self) -> None:
        try:
            super().train()
        finally:
            if self.profiler is not None:  # stopped inside the profiling window: write what was recorded
                self.profiler.__exit__(None, None, None)
                self.profiler = None

    def _train_epoch(self, epoch: int) -> dict | None:
        s = self.settings
        resumed = self.progress.epoch == epoch and self.progress.batch_in_epoch
        start, total = (self.progress.batch_in_epoch if resumed else 0), self.batches_per_epoch
        if not resumed:
            self.losses.reset()
            self.train_metrics.reset()
            self.train_logged.reset()
        self.progress.epoch, self.progress.batch_in_epoch = epoch, start
        if start:
            self.logger.info("resuming epoch %d at batch %s of %s", epoch, f"{start:,}", f"{total:,}")
        self.model.train()
        bar = progress_bar(total, f"epoch {epoch}", self.show_progress, initial=start)
        started, samples, data_wait = time.perf_counter(), 0, 0.0
        first_inputs = None
        if s.profile and self.profile_from is None and self.recorder.run_dir is not None:
            self.profile_from = self.progress.global_step
            self.profiler = start_profiler(s.profile, self.recorder.run_dir / "profile")
        batches = iter(self.data.epoch_batches(epoch, start))
        measured = bool(self.train_metrics.names)
        several = self.optimizer_set

        for batch_idx in range(start, total):
            waiting = time.perf_counter()
            batch = next_batch(batches)
            data_wait += time.perf_counter() - waiting
            inputs, target = self.read_batch(batch)
            if batch_idx == start and s.log_images and isinstance(inputs, torch.Tensor):
                first_inputs = inputs  # logged at the epoch's end, with the histograms
            # Accumulation groups are fixed by position, so a resumed epoch groups batches as before.
            group_start = batch_idx - batch_idx % s.accumulate_steps
            group_size = min(s.accumulate_steps, total - group_start)
            last_in_group = batch_idx + 1 == group_start + group_size

            if self.manual is not None:
                self.manual.begin(group_size, last_in_group)
            with self.model.no_sync(sync=last_in_group):
                with self.precision.autocast():
                    loss, output = self.training_step(inputs, target)
                if self.manual is not None:
                    loss = loss if isinstance(loss, torch.Tensor) else sum_losses(loss, self.train_logged, "loss_")
                elif several is None:
                    self.precision.backward(loss / group_size if group_size > 1 else loss)
                else:
                    loss = several.backward(loss, self.stepping, self.precision, group_size, self.train_logged)
            size = self.read_batch.count(inputs, target)
            samples += size
            if self.train_logged.pending:
                self.train_logged.commit(size)
            self.losses.add(loss, size, self.progress.global_step + 1)
            if measured:
                self.train_metrics.update(output.detach() if isinstance(output, torch.Tensor) else map_tensors(output, torch.Tensor.detach), target, size)

            if last_in_group:
                if self.manual is not None:
                    self.manual.end_group(self.progress.global_step, self.schedule, self.model.module)
                elif several is None:
                    self.precision.step(self.optimizer, self.trainable, s.clip_grad_norm)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.schedule.after_optimizer_step()
                else:
                    several.step(self.stepping, self.precision, s.clip_grad_norm, self.schedule, self.model.module)
                if self.ema is not None:
                    self.ema.update(self.progress.global_step)
                if self.profiler is not None:
                    self._step_profiler()
                self.progress.global_step += 1
                self.progress.batch_in_epoch = batch_idx + 1
                if self._after_step(epoch, total, samples, started, bar):
                    return None
            bar.update()
        bar.close()
        self._check_losses(epoch)
        elapsed = max(time.perf_counter() - started, 1e-9)
        row = {"loss": self.losses.epoch_loss(self.device), **self.train_metrics.compute(), **self.train_logged.compute()}
        self.losses.reset()  # the epoch's state is in its row: checkpoints from here on hold an empty one
        self.train_metrics.reset()
        self.train_logged.reset()
        seen = distributed.all_reduce_sum(torch.tensor([float(samples)], device=self.device)).item()
        self.epoch_samples = int(seen)
        row.update(samples_per_sec=round(seen / elapsed, 2), data_wait=round(data_wait / elapsed, 4))
        self._hint_data_wait(row["data_wait"])
        if s.log_histograms:
            self.recorder.tensorboard.add_histograms(self.model.module, self.progress.global_step)
        if first_inputs is not None:
            self.recorder.tensorboard.add_images("train/inputs", first_inputs, self.progress.global_step)
        return row

    def _after_step(self, epoch: int, total: int, samples: int, started: float, bar: Any) -> bool:
        """Logging, step checkpoints and the stop check after an optimizer step; True to stop."""
        step = self.progress.global_step
        if not self.replicas_checked:  # and after the first step
            self.replicas_checked = True
            check_replicas(self.model, step)
        if step % self.settings.log_step == 0:
            mean = self._check_losses(epoch)
            rate = samples * distributed.world_size() / max(time.perf_counter() - started, 1e-9)
            self.recorder.log_scalars({"train/step_loss": mean, "train/step_samples_per_sec": rate}, step)
            if self.show_progress:
                bar.set_postfix(loss=f"{mean:.4f}", samples_s=f"{rate:,.0f}")
            else:
                batch = self.progress.batch_in_epoch
                self.logger.info("epoch %d [%d/%d] step %d  loss %.6g  %.0f samples/s", epoch, batch, total, step, mean, rate)
        save = bool(self.settings.save_every_n_steps) and step % self.settings.save_every_n_steps == 0
        stopping = self.stop_agreed()
        if save or stopping:
            self._check_losses(epoch)
            self.save_last()
        if stopping:
            bar.close()
        return stopping

    def save_last(self) -> None:
        check_replicas(self.model, self.progress.global_step)  # DDP's replicas agree before each checkpoint
        super().save_last()

    def backward(self, loss: torch.Tensor, optimizer: str | None = None, retain_graph: bool | None = None) -> None:
        """Manual optimization's backward (``trainer/manual.py``): ``loss`` scaled for the GradScaler and
        for accumulation; with an optimizer's name, gradients only into that optimizer's parameters
        (``retain_graph=True`` when another loss backpropagates through the same forward after it)."""
        if self.manual is None:
            raise UserError("self.backward: the engine does backward in automatic optimization; set automatic_optimization = False in your Trainer to call it")
        self.manual.backward(loss, optimizer, retain_graph)

    def _step_profiler(self) -> None:
        """Advance ``trainer.profile``'s window; after its last active step the trace is written."""
        self.profiler.step()
        window = self.settings.profile
        if self.progress.global_step + 1 - self.profile_from >= window["wait"] + window["warmup"] + window["active"]:
            self.profiler.__exit__(None, None, None)
            self.profiler = None
            self.logger.info("profiler trace written to %s", self.recorder.run_dir / "profile")

    def _check_losses(self, epoch: int) -> float | None:
        """Mean loss of the batches since the last check; stops the run if any of them was not finite."""
        mean, bad = self.losses.read()
        if self.distributed and distributed.any_process(bad is not None):  # every process stops, none waits for the others
            bad = bad or ("?", "on another process")
        if bad is not None:
            step, value = bad
            intact = "the last good checkpoint is intact" if self.saved_once else "no checkpoint was written, so nothing can be resumed"
            raise NonFiniteLossError(
                f"non-finite loss ({value}) in epoch {epoch} at optimizer step {step}; training stopped and "
                f"{intact}; lower optimizer.args.lr, set trainer.clip_grad_norm, or check the data"
            )
        return mean

    def _hint_data_wait(self, share: float) -> None:
        if share > DATA_WAIT_HINT and not self.data_wait_hinted:
            self.data_wait_hinted = True
            self.logger.warning(
                "the training loop waited for data %.0f%% of the epoch: raise data_loader.args.num_workers, "
                "set data_loader.args.in_memory=true if the data fits, or make the Dataset's __getitem__ cheaper "
                "(pinned memory is on whenever CUDA is)",
                100 * share,
            )

    # -- validation and the epoch's end -----------------------------------------------------------

    def _valid_epoch(self, epoch: int) -> dict:
        source = self.data if self.settings.overfit_batches else self.valid_data
        if source is None:
            return {}
        return self.evaluate(source.epoch_batches(1, 0), "val_", f"valid {epoch}", source.batches_per_epoch, self.valid_steps)

    def _evaluation_weights(self):
        """The EMA weights in the model while validating (when on and ``trainer.ema_evaluate``)."""
        if self.ema is not None and self.settings.ema_evaluate:
            return self.ema.applied(self.model.module)
        return NO_CONTEXT

    def _after_epoch(self, row: dict) -> None:
        self.schedule.after_epoch(row, self.monitor.metric)

    def _learning_rates(self) -> dict:
        if self.optimizer_set is not None:
            return self.optimizer_set.learning_rates()
        groups = self.optimizer.param_groups
        rates = {"lr": float(groups[0]["lr"])}  # float(): a tensor when the optimizer keeps lr as one
        rates.update({f"lr_group{i}": float(group["lr"]) for i, group in enumerate(groups) if i})
        return rates


def start_profiler(window: dict, folder) -> Any:
    """``torch.profiler`` over ``window`` = {wait, warmup, active} optimizer steps, writing a trace
    for TensorBoard's profiler plugin (or chrome://tracing, Perfetto) into ``folder``."""
    schedule = torch.profiler.schedule(wait=window["wait"], warmup=window["warmup"], active=window["active"], repeat=1)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    handler = torch.profiler.tensorboard_trace_handler(str(folder))
    profiler = torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=handler)
    profiler.__enter__()
    return profiler


class _LossesAndLogged:
    """The losses part of a checkpoint: the loss sums, and the sums of values a step logged (under
    ``logged``; a checkpoint from before ``self.log`` existed has none)."""

    def __init__(self, losses: LossTracker, logged: LoggedValues):
        self.losses, self.logged = losses, logged

    def state_dict(self) -> dict:
        return {**self.losses.state_dict(), "logged": self.logged.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.losses.load_state_dict(state)
        self.logged.load_state_dict(state.get("logged") or {})


class _NoEMA:
    """The EMA part of a run without EMA: its state is None. A checkpoint's averages are dropped
    (with a note), so a run can be resumed with EMA turned off."""

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: Any) -> None:
        if state is not None:
            get_logger().warning("ema: the checkpoint holds EMA weights, but trainer.ema_decay is null: they are dropped")
