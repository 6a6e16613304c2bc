"""Several named optimizers: who owns which parameters, who steps when, and one engine step of them.

``"optimizer": {"discriminator": {...}, "generator": {..., "every": 1}}`` (an ``optimizer``
mapping without ``type``) declares them in step order; ``app/config/building.py`` builds one
torch optimizer per name over the trainable parameters whose names start with its ``params``
prefixes (each trainable parameter owned exactly once) and hands them here as an
:class:`OptimizerSet`.

Decisions where the issue is silent:

- **The stepping rule.** Engine step ``n`` (``global_step`` before the step, 0-based) steps the
  optimizers with ``(n + 1) % every == 0``; it is a function of ``global_step`` alone, so an
  alternation survives accumulation and a mid-epoch resume exactly (``global_step`` is in every
  checkpoint). An engine step where no optimizer steps still counts as a step.
- **The step.** ``training_step`` returns ``{name: loss}``; each stepping optimizer's loss is
  backpropagated (precision and ``1/accumulation`` scaling) into that optimizer's parameters
  only (``torch.autograd.backward(..., inputs=params)``), in declared order, every graph but the
  last kept (losses may share a forward). At a group's end, per stepping optimizer: gradients
  averaged over processes, unscaled and clipped (``trainer.clip_grad_norm`` over its own
  parameters), stepped, zeroed; the GradScaler updates once per engine step. A loss of a
  non-stepping optimizer is logged but not backpropagated.
- **Schedulers** (``lr_scheduler`` a mapping of optimizer names) with ``interval: "step"`` step
  after their own optimizer steps; epoch ones after every epoch.
- **No DDP wrapper** with several optimizers: gradients are all-reduced here, and buffers are
  broadcast from rank 0 after every engine step (DDP broadcasts them before each forward), so a
  step may call sub-models any way it likes. FSDP is refused (``trainer/parallel.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from base.training_state import TypedState
from trainer.schedule import Schedule
from utils import distributed
from utils.errors import UserError

ONE = "optimizer"
"""The name of the one optimizer of a run that declares one (``self.optimizers == {"optimizer": opt}``)."""
OBJECT_KEYS = frozenset({"type", "args", "param_groups"})


def declares_several(node: Any) -> bool:
    """Whether an ``optimizer`` (or ``lr_scheduler``) node is a mapping of names to specs, not one spec."""
    return (
        isinstance(node, dict)
        and bool(node)
        and "type" not in node
        and not (set(node) & OBJECT_KEYS)
        and all(isinstance(v, dict) for v in node.values())
    )


class OptimizerSet:
    """The named optimizers of a run, in step order, with the parameters each owns and its ``every``."""

    def __init__(
        self, optimizers: dict[str, torch.optim.Optimizer], params: dict[str, list[torch.Tensor]], every: dict[str, int] | None = None
    ):
        self.optimizers = dict(optimizers)
        self.names = tuple(self.optimizers)
        self.params = {name: list(params[name]) for name in self.names}
        self.every = {name: int((every or {}).get(name, 1)) for name in self.names}
        for name, value in self.every.items():
            if value < 1:
                raise UserError(
                    f"optimizer.{name}.every: must be a whole number >= 1 (steps of the engine per step of {name}), got {value}"
                )
        self._stepping: dict[int, frozenset[str]] = {}

    def stepping_at(self, step: int) -> frozenset[str]:
        """The optimizers that step at engine step ``step`` (0-based: ``global_step`` before it)."""
        period = step % _lcm(self.every.values())
        names = self._stepping.get(period)
        if names is None:
            names = self._stepping[period] = frozenset(n for n in self.names if (step + 1) % self.every[n] == 0)
        return names

    def check_losses(self, losses: Any, stepping: frozenset[str], where: str = "training_step") -> dict[str, torch.Tensor]:
        """``losses`` as ``{name: loss}``: one line for a structure that is not that, a stepping optimizer's
        loss missing, or a name that is no optimizer's."""
        if not isinstance(losses, dict):
            kind = type(losses).__name__
            raise UserError(
                f"{where}: returned one loss ({kind}) but the config declares several optimizers ({', '.join(self.names)}); "
                f"return ({{name: loss}}, output) with a loss for each optimizer that steps (self.stepping)"
            )
        unknown = [name for name in losses if name not in self.optimizers]
        if unknown:
            raise UserError(
                f"{where}: returned a loss for {unknown[0]!r}, which is no optimizer's name; the optimizers are {', '.join(self.names)}"
            )
        missing = [name for name in self.names if name in stepping and name not in losses]
        if missing:
            raise UserError(
                f"{where}: no loss for optimizer {missing[0]!r}, which steps at this step (self.stepping = {sorted(stepping)}); "
                f"return a loss for it, or give it an 'every' that skips this step"
            )
        return losses

    def backward(self, losses: Any, stepping: frozenset[str], precision: Any, group_size: int, logged: Any) -> torch.Tensor:
        """Backpropagate each stepping optimizer's loss into its parameters; the sum of every loss (logged as the loss)."""
        losses = self.check_losses(losses, stepping)
        order = [name for name in self.names if name in stepping]
        scaler = precision.scaler
        for index, name in enumerate(order):
            loss = losses[name] / group_size if group_size > 1 else losses[name]
            torch.autograd.backward(
                scaler.scale(loss) if scaler is not None else loss, inputs=self.params[name], retain_graph=index + 1 < len(order)
            )
        return sum_losses(losses, logged, "loss_")

    def step(self, stepping: frozenset[str], precision: Any, clip_grad_norm: float | None) -> None:
        """The end of an accumulation group: average, unscale, clip, step and zero each stepping optimizer."""
        for name in self.names:
            if name not in stepping:
                continue
            if distributed.is_distributed():
                average_gradients(self.params[name])
            precision.step(self.optimizers[name], self.params[name], clip_grad_norm, update=False)
            self.optimizers[name].zero_grad(set_to_none=True)
        if stepping:
            precision.update()

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def learning_rates(self) -> dict[str, float]:
        """``lr_<name>`` (the first group's) and ``lr_<name>_group<i>`` per optimizer."""
        rates = {}
        for name, optimizer in self.optimizers.items():
            for i, group in enumerate(optimizer.param_groups):
                rates[f"lr_{name}_group{i}" if i else f"lr_{name}"] = float(group["lr"])
        return rates


def _lcm(values: Any) -> int:
    import math

    result = 1
    for value in values:
        result = result * value // math.gcd(result, value)
    return result


def sum_losses(losses: dict[str, torch.Tensor], logged: Any, prefix: str) -> torch.Tensor:
    """The sum of ``losses`` (detached), each also logged as ``<prefix><name>`` when ``logged`` is given."""
    total = None
    for name, loss in losses.items():
        if logged is not None:
            logged.pending[f"{prefix}{name}"] = loss.detach().reshape(())
        total = loss.detach() if total is None else total + loss.detach()
    if total is None:
        raise UserError("training_step: returned an empty mapping of losses; return a loss for each optimizer that steps")
    return total


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """The mean of each parameter's gradient over processes, in one all-reduce; a gradient that no
    process has stays None (a gradient one process lacks counts as zeros there)."""
    if not params:
        return
    world = distributed.world_size()
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    present = torch.tensor([float(p.grad is not None) for p in params], device=flat.device)
    flat = distributed.all_reduce_sum(torch.cat([flat, present]))
    offset = 0
    for index, p in enumerate(params):
        size = p.numel()
        if flat[-len(params) + index] > 0:
            mean = (flat[offset : offset + size] / world).view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = mean
            else:
                p.grad.copy_(mean)
        offset += size


def broadcast_state(module: nn.Module, buffers_only: bool = False) -> None:
    """Rank 0's buffers (and parameters, unless ``buffers_only``) on every process, as DDP does."""
    if not distributed.is_distributed():
        return
    import torch.distributed as dist

    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


class OptimizerStates:
    """The ``optimizer`` part of a checkpoint with several optimizers: ``{name: {type, state}}``."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.parts = {name: TypedState(optimizer, f"optimizer.{name}") for name, optimizer in optimizers.items()}

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: Any) -> None:
        _check_names(state, self.parts, "optimizer")
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


class Schedules:
    """Each optimizer's learning-rate schedule (``lr_scheduler.<name>``); the ``lr_scheduler`` part of a
    checkpoint is ``{name: {type, state}}`` over the declared ones."""

    def __init__(self, schedulers: dict[str, Any], intervals: dict[str, str]):
        self.schedules = {name: Schedule(scheduler, intervals.get(name, "epoch")) for name, scheduler in schedulers.items()}

    def after_optimizer_step(self, stepping: frozenset[str] = frozenset()) -> None:
        for name, schedule in self.schedules.items():
            if name in stepping:
                schedule.after_optimizer_step()

    def after_epoch(self, row: dict, monitored: str | None) -> None:
        for schedule in self.schedules.values():
            schedule.after_epoch(row, monitored)

    def state_dict(self) -> dict:
        return {name: schedule.state_dict() for name, schedule in self.schedules.items()}

    def load_state_dict(self, state: Any) -> None:
        _check_names(state or {}, self.schedules, "lr_scheduler")
        for name, schedule in self.schedules.items():
            schedule.load_state_dict(state[name])


def _check_names(state: Any, mine: dict, key: str) -> None:
    saved = sorted(state) if isinstance(state, dict) and "type" not in state else None
    if saved != sorted(mine):
        held = f"the {key}s {saved}" if saved is not None else f"one {key}"
        raise UserError(
            f"{key}: the checkpoint holds {held}, this config declares {sorted(mine) or 'none'}; resume with the run's {key}, "
            f"or start a new run from its weights with -r CHECKPOINT -c CONFIG"
        )


def snapshot_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Every group's settings but its parameters, copied (to put back after a probe step)."""
    return [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
