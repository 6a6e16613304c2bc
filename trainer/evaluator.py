"""Evaluation: the loss and metrics of a model over batches, for validation (a part the Trainer
holds) and for ``test.py``. Batches are read as the Trainer reads them (``trainer/batches.py``)
under the same precision (``trainer/precision.py``), so test numbers are computed exactly as
training-time validation numbers are.

What one batch costs is a *step*, ``step(inputs, target) -> (loss, output)``: by default the model's
output and the loss; the Trainer passes its ``validation_step``, so an override counts in
validation and in ``test.py`` alike.

Every process evaluates its own shard (no padding: each sample counts once) and the values are
reduced over processes as sums and counts, or by the metric objects' own sync, so an epoch value
equals a single-process evaluation of the same samples, however they were batched or sharded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from logger.progress import progress_iter
from trainer.batches import BatchReader, each_batch, run_model
from trainer.loss import Loss
from trainer.metrics import LossTracker, MetricSet
from trainer.optimizers import sum_losses
from trainer.precision import Precision
from trainer.step_log import LoggedValues
from utils.errors import UserError

Step = Callable[[Any, Any], "tuple[torch.Tensor, Any]"]


class Evaluator:
    """Args:
    model: what to evaluate (the Trainer passes its evaluation forward, EMA weights swapped in);
        put in eval mode for the pass.
    criterion: the loss (see ``trainer/loss.py``: it may take the inputs).
    metrics: ``{name: function or metric object}`` (``trainer/metrics.py``), or a ``MetricSet``.
    device: where batches go.
    amp: ``trainer.amp``.
    read_batch: how a batch becomes ``(inputs, target)`` (default: ``trainer/batches.py``'s rules).
    show_progress: a tqdm bar on a terminal.
    step: ``(inputs, target) -> (loss, output)`` for one batch (default: ``model`` and the loss).
    logged: where the step's ``self.log`` values go (``trainer/step_log.py``), averaged into the results.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable,
        metrics: dict[str, Any] | MetricSet | None,
        device: torch.device,
        amp: str | None = None,
        read_batch: BatchReader | None = None,
        show_progress: bool = False,
        step: Step | None = None,
        logged: LoggedValues | None = None,
    ):
        self.model = model
        self.loss = criterion if isinstance(criterion, Loss) else Loss(criterion, device)
        self.step = step or self.default_step
        self.metrics = metrics if isinstance(metrics, MetricSet) else MetricSet(metrics, device)
        self.device = device
        self.precision = Precision(amp, device)
        self.reader = read_batch or BatchReader(device)
        self.show_progress = show_progress
        self.logged = logged

    def default_step(self, inputs: Any, target: Any) -> tuple[torch.Tensor, Any]:
        output = run_model(self.model, inputs)
        return self.loss(output, target, inputs), output

    @torch.no_grad()
    def evaluate(
        self, batches: Iterable, prefix: str = "", desc: str = "evaluate", total: int | None = None, steps: int | None = None
    ) -> dict[str, Any]:
        """Sample-weighted loss and the metrics over all of ``batches`` (this process's share);
        a collective under DDP. A non-finite loss is not an error here: it shows as NaN.

        ``steps`` (sharded models): run the model that many times, repeating the last batch
        uncounted once this process's share is done, so every process joins every all-gather.
        """
        model = self.model
        was_training = model.training
        model.eval()
        self.metrics.reset()
        if self.logged is not None:
            self.logged.reset()
        losses = LossTracker()
        count, inputs, target = 0, None, None
        for batch in progress_iter(each_batch(batches), desc, self.show_progress, total):
            inputs, target = self.reader(batch)
            with self.precision.autocast():
                loss, output = self.step(inputs, target)
            if isinstance(loss, dict):  # one loss per optimizer: their sum, each logged as loss_<name> (trainer/optimizers.py)
                loss = sum_losses(loss, self.logged, "loss_")
            size = self.reader.count(inputs, target)
            losses.add(loss, size, count)
            if self.logged is not None and self.logged.pending:
                self.logged.commit(size)
            self.metrics.update(output, target, size)
            count += 1
        if count == 0 and (steps or 0) > 0:
            raise UserError("this process's share of the evaluation data is empty while other processes have batches; use fewer processes or more data")
        for _ in range((steps or count) - count):
            with self.precision.autocast():
                self.step(inputs, target)  # uncounted, the same work as a counted batch (a validation_step may run the model twice)
            if self.logged is not None:
                self.logged.pending.clear()
        losses.read()
        model.train(was_training)
        logged = self.logged.compute() if self.logged is not None else {}
        values = {"loss": losses.epoch_loss(self.device), **self.metrics.compute(), **logged}
        return {f"{prefix}{name}": value for name, value in values.items()}
