"""The pre-flight: one real batch through forward, loss, every metric and backward, on the real
device, before the run directory exists (``trainer.preflight``).

It changes nothing: the optimizer does not step, gradients are dropped, BatchNorm statistics
and every random generator are put back, metric objects are updated on copies; a run is bitwise
the same with and without it. A Trainer subclass's step may do more (step an optimizer of its
own by hand, count something): then every shared part of the checkpoint (``state_parts()``: the
weights, every optimizer, scheduler and GradScaler, EMA, progress, and the parts a subclass adds)
is copied before the batch and put back after it. ``trainer.in_preflight`` is True during the
batch, for a step that would rather skip something. What it finds becomes one line naming the key and the fix, instead
of a traceback after an epoch: a model that cannot take the data's inputs (torch's own words are
kept), labels beyond the model's classes, a loss that is not a scalar, a metric that returns a
non-tensor or non-scalar, a dict output reaching a metric that wants a tensor, a monitored metric
that the run does not produce. An exception raised inside the user's own code that is none of
these is left alone: it is a bug there, and its traceback shows the user's line. A batch whose
samples cannot be counted (:func:`trainer.batches.count_samples`) and a metric pointed at a field
that the output or the target lacks are one line here too.
"""

from __future__ import annotations

import copy
import inspect
import re
import warnings
from typing import TYPE_CHECKING, Any

import torch

from dataflow.epochs import ceil_div
from trainer.batches import describe, next_batch, run_model
from trainer.metrics import flatten
from utils.errors import UserError, first_line
from utils.nested import map_tensors
from utils.seed import get_rng_state, set_rng_state
from utils.user_code import raised_in_user_code, relative, user_frame

if TYPE_CHECKING:
    from trainer.trainer import Trainer

SHAPE_WORDS = re.compile(r"shape|size|dimension|channels|mat1|mat2|[Ee]xpected|must match|out of bounds|out of range")


def run_preflight(trainer: Trainer) -> None:
    """Check one training batch, and the monitored metric against what the metrics return."""
    module = trainer.model.module
    buffers = [b.detach().clone() for b in module.buffers()]
    rng = get_rng_state()
    was_training = module.training
    saved = _snapshot(trainer) if _custom_step(trainer) else None
    trainer.in_preflight = True
    try:
        try:
            batch = next_batch(iter(trainer.data.epoch_batches(trainer.progress.start_epoch, 0)))
        except StopIteration:
            batch = None
        if batch is not None:
            produced = _check_batch(trainer, batch)
            _check_monitor(trainer.monitor.metric, produced)
        _check_optimizer(trainer)
        _check_schedule(trainer)
    finally:
        trainer.in_preflight = False
        trainer.train_logged.reset()
        for optimizer in trainer.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for kept, buffer in zip(buffers, module.buffers()):
                buffer.copy_(kept)
        if saved is not None:
            for name, part in trainer.state_parts().items():
                part.load_state_dict(saved[name])
        module.train(was_training)
        set_rng_state(rng)


def _custom_step(trainer: Trainer) -> bool:
    """Whether a subclass's code runs in the step (or keeps parts of its own) and so may change state."""
    from trainer.trainer import Trainer

    kind = type(trainer)
    return kind.training_step is not Trainer.training_step or kind.state_parts is not Trainer.state_parts


def _snapshot(trainer: Trainer) -> dict[str, Any]:
    """Every shared part's state, copied (plain tensors to the CPU, so the copy takes no device memory)."""

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to("cpu", copy=True) if type(tensor) is torch.Tensor else copy.deepcopy(tensor.detach())

    return {name: map_tensors(part.state_dict(), keep) for name, part in trainer.state_parts().items()}


def _check_monitor(metric: str | None, produced: dict[str, Any]) -> None:
    if metric is None:
        return
    name = metric.removeprefix("val_")
    if name not in produced:
        raise UserError(f"trainer.monitor: the run does not produce {metric!r}; its metrics are {sorted(produced)} (with val_ for validation)")
    if isinstance(produced[name], list):
        raise UserError(f"trainer.monitor: {metric!r} is a matrix, not a number; monitor a scalar metric such as {sorted(k for k, v in produced.items() if not isinstance(v, list))}")


def _check_batch(trainer: Trainer, batch: Any) -> dict[str, Any]:
    """Forward, loss, metrics and backward on ``batch``; returns one value of each logged metric.

    The step runs on the module itself (no DDP collective, so ranks need not agree on the pre-flight).
    A ``training_step`` of the user's own is run as it is and its result checked; the template's
    step is checked part by part, so a mismatch names the model, the loss or the data.
    """
    from trainer.trainer import Trainer

    inputs, target = trainer.read_batch(batch)
    trainer.read_batch.count(inputs, target)  # a batch whose samples cannot be counted is one line here, before any work
    module = trainer.model.module
    module.train()
    trainer._forward_module = module
    epoch, trainer.progress.epoch = trainer.progress.epoch, trainer.progress.start_epoch  # the step sees the epoch it will train
    try:
        with trainer.precision.autocast():
            if type(trainer).training_step is Trainer.training_step:
                loss, output = _template_step(trainer, inputs, target)
            else:
                loss, output = _users_step(trainer, inputs, target)
    finally:
        trainer._forward_module = trainer.model.train_forward
        trainer.progress.epoch = epoch
    losses = {"": loss}
    if trainer.optimizer_set is not None:  # one loss per stepping optimizer (trainer/optimizers.py)
        losses = trainer.optimizer_set.check_losses(loss, trainer.stepping)
    for name, each in losses.items():
        if not isinstance(each, torch.Tensor) or each.numel() != 1 or not each.is_floating_point():
            what = f"loss: it returned {describe(each)}" if not name else f"training_step: the loss of optimizer {name!r} is {describe(each)}"
            raise UserError(f"{what}; a loss must be one floating-point number per batch (e.g. reduce it with .mean())")
    loss = sum(losses.values()) if len(losses) > 1 else next(iter(losses.values()))
    produced = {"loss": loss.item(), **_check_metrics(trainer, output, target)}
    if trainer.optimizer_set is not None:
        produced.update({f"loss_{name}": each.item() for name, each in losses.items()})
    produced.update({name: float(value) for name, value in trainer.train_logged.pending.items()})  # self.log's, monitorable
    try:
        loss.backward()
    except RuntimeError as exc:
        raise UserError(f"loss: backward failed ({first_line(exc)}); the loss must depend on the model's trainable parameters") from None
    return produced


def _template_step(trainer: Trainer, inputs: Any, target: Any) -> tuple[Any, Any]:
    try:
        output = run_model(trainer._forward_module, inputs)
    except (RuntimeError, ValueError, IndexError) as exc:
        if not SHAPE_WORDS.search(str(exc)):
            raise
        frame = user_frame(exc)  # a shape mismatch in a line of the user's: the config, or that line
        where = f" at {relative(frame.filename)}:{frame.lineno}" if frame and raised_in_user_code(exc) else ""
        raise UserError(
            f"arch: the model cannot take the data's inputs ({describe(inputs)}): {first_line(exc)}{where}; "
            f"make arch.args (input size, channels, classes) fit the data{', or fix that line' if where else ''}"
        ) from None
    _check_classes(output, target, getattr(trainer.data, "classes", None))
    try:
        loss = trainer.loss(output, target, inputs)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        if user_frame(exc) is not None and not SHAPE_WORDS.search(str(exc)):
            raise
        raise UserError(f"loss: it cannot take the model's output ({describe(output)}) and the target ({describe(target)}): {first_line(exc)}") from None
    return loss, output


def _users_step(trainer: Trainer, inputs: Any, target: Any) -> tuple[Any, Any]:
    """The subclass's ``training_step``; an exception in it is a bug there (its traceback), a wrong return a line."""
    result = trainer.training_step(inputs, target)
    if not isinstance(result, tuple) or len(result) != 2:
        raise UserError(
            f"trainer.type: {type(trainer).__name__}.training_step returned {describe(result)}; it must return (loss, output)"
        )
    return result


def _check_classes(output: Any, target: Any, names: list | None = None) -> None:
    """Class indices must be below the number of scores the model gives per sample: those of this
    batch, and every class the data loader knows by name (``classes``), which a batch may not show."""
    if not (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor)):
        return
    if output.dim() < 2 or not output.is_floating_point() or target.is_floating_point() or target.dim() != output.dim() - 1:
        return
    classes, largest = output.shape[1], int(target.max()) if target.numel() else -1
    if isinstance(names, (list, tuple)) and len(names) > classes:
        raise UserError(
            f"arch.args.num_classes: the data has {len(names)} classes ({', '.join(map(str, names[:5]))}{', ...' if len(names) > 5 else ''}) "
            f"but the model outputs {classes} scores per sample; set it to {len(names)}"
        )
    if largest >= classes:
        raise UserError(
            f"arch.args.num_classes: the data has class index {largest} but the model outputs {classes} scores per sample; "
            f"set it to at least {largest + 1} (the labels run from 0 to num_classes - 1)"
        )


def _check_metrics(trainer: Trainer, output: Any, target: Any) -> dict[str, Any]:
    """Every metric on the batch (objects on copies, with torchmetrics' input checks on); one value of each."""
    detached = output.detach() if isinstance(output, torch.Tensor) else map_tensors(output, torch.Tensor.detach)
    metrics = trainer.train_metrics
    produced: dict[str, Any] = {}
    for name, fn in metrics.functions.items():
        taken, wanted = metrics.select(name, detached, target)
        try:
            value = fn(taken, wanted)
        except Exception as exc:
            raise _metric_failure(name, exc, taken, wanted) from None
        if not isinstance(value, torch.Tensor):
            raise UserError(f"metrics: {name} returned a {type(value).__name__} ({value!r}); a metric function must return a tensor (its mean over the batch)")
        if value.numel() != 1:
            raise UserError(f"metrics: {name} returned a tensor of shape {tuple(value.shape)}; a metric function must return one number per batch")
        produced[name] = value.item()
    for name, obj in metrics.objects.items():
        probe = copy.deepcopy(obj)
        if getattr(probe, "validate_args", None) is False:
            probe.validate_args = True  # torchmetrics' input checks, once here, so training may turn them off
        taken, wanted = metrics.select(name, detached, target)
        try:
            probe.update(taken, wanted)
            produced.update(flatten(name, probe.compute()))
        except UserError:
            raise
        except Exception as exc:
            raise _metric_failure(name, exc, taken, wanted) from None
    return produced


def _metric_failure(name: str, exc: Exception, output: Any, target: Any) -> Exception:
    """What a metric's exception is: a model output of the wrong kind, a bug in the user's metric
    (re-raised with its traceback), or a library metric rejecting its inputs (a config or data mismatch)."""
    if not isinstance(output, torch.Tensor) and isinstance(exc, (AttributeError, TypeError, KeyError, IndexError)):
        return UserError(
            f"metrics: {name} cannot take the model's output ({describe(output)}): {type(exc).__name__}: {first_line(exc)}; "
            f'make the model return a tensor, or point the metric at one field ("output": "<key>" in its entry)'
        )
    if raised_in_user_code(exc):
        return exc
    return UserError(f"metrics: {name} rejected the model's output ({describe(output)}) and target ({describe(target)}): {first_line(exc)}")


def _check_optimizer(trainer: Trainer) -> None:
    """One step of each optimizer's class with its settings, on a stand-in parameter per group."""
    for name, optimizer in trainer.optimizers.items():
        _check_one_optimizer(optimizer, "optimizer" if trainer.optimizer_set is None else f"optimizer.{name}")


def _check_one_optimizer(optimizer: torch.optim.Optimizer, key: str) -> None:
    if not optimizer.param_groups:
        return
    groups = []
    for group in optimizer.param_groups:
        first = group["params"][0]
        stand_in = torch.zeros(1, dtype=first.dtype, device=first.device, requires_grad=True)
        stand_in.grad = torch.zeros_like(stand_in)
        groups.append({**{k: copy.deepcopy(v) for k, v in group.items() if k != "params"}, "params": [stand_in]})
    name = type(optimizer).__name__
    accepted = inspect.signature(type(optimizer)).parameters
    defaults = {k: copy.deepcopy(v) for k, v in optimizer.defaults.items() if k in accepted}  # AdamW keeps one it does not take
    try:
        probe = type(optimizer)(groups, **defaults)
        probe.step()
    except TypeError as exc:
        if "closure" in str(exc):
            raise UserError(f"{key}.type: {name} steps with a closure, which the Trainer does not give; choose another optimizer") from None
        raise UserError(f"{key}.args: {name} cannot step with these settings ({first_line(exc)}); fix {key}.args") from None
    except (ValueError, IndexError, KeyError, RuntimeError, ZeroDivisionError) as exc:
        raise UserError(f"{key}.args: {name} cannot step with these settings ({first_line(exc)}); fix {key}.args") from None


def _check_schedule(trainer: Trainer) -> None:
    """One step of each scheduler, undone; and a schedule of a fixed length must cover the run."""
    steps = trainer.settings.epochs * ceil_div(trainer.batches_per_epoch, trainer.settings.accumulate_steps)
    if trainer.optimizer_set is None:
        _check_one_schedule(trainer.schedule, trainer.optimizer, steps, "lr_scheduler", trainer.settings.epochs)
        return
    for name, schedule in trainer.schedule.schedules.items():
        every = trainer.optimizer_set.every[name]  # a step schedule steps with its optimizer
        _check_one_schedule(schedule, trainer.optimizers[name], steps // every, f"lr_scheduler.{name}", trainer.settings.epochs)


def _check_one_schedule(schedule: Any, optimizer: torch.optim.Optimizer, steps: int, key: str, epochs: int) -> None:
    scheduler = schedule.scheduler
    if scheduler is None:
        return
    total = getattr(scheduler, "total_steps", None)
    if schedule.interval == "step" and isinstance(total, int) and total < steps:
        raise UserError(
            f"{key}.args.total_steps: {type(scheduler).__name__} is set for {total} steps but the run takes {steps} "
            f"optimizer steps ({epochs} epochs); set total_steps to at least {steps}"
        )
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return
    state = copy.deepcopy(scheduler.state_dict())
    groups = [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": on purpose here
            scheduler.step()
    except (ValueError, ZeroDivisionError, IndexError, TypeError, RuntimeError) as exc:
        raise UserError(f"{key}.args: {type(scheduler).__name__} cannot step with these settings ({first_line(exc)}); fix {key}.args") from None
    finally:
        scheduler.load_state_dict(state)
        for group, saved in zip(optimizer.param_groups, groups):
            group.update(saved)
