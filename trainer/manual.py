"""Manual optimization: a step that calls backward and steps its optimizers itself.

A Trainer subclass with ``automatic_optimization = False`` returns ``(loss_for_logging, output)``
from ``training_step`` and calls ``self.backward(loss, optimizer="name")`` and
``self.optimizers[name].step()`` / ``.zero_grad()``. What the engine still does for it:

- ``self.backward`` scales the loss for the GradScaler (fp16) and by ``1/accumulation``; with an
  optimizer's name, gradients go only into that optimizer's parameters.
- ``self.optimizers[name]`` are :class:`ManualOptimizer` wrappers. Inside an accumulation group
  ``step()`` and ``zero_grad()`` are deferred (no-ops) until the group's last micro-batch, where
  ``step()`` is real: gradients averaged over processes (there is no DDP wrapper in manual mode, so
  sub-models may be called any way), unscaled and clipped (``trainer.clip_grad_norm``), stepped
  through the GradScaler, and a per-step scheduler of that optimizer stepped. ``zero_grad()`` after
  a real step is real; before it (the common ``zero_grad(); backward(); step()``) it would wipe
  the group's accumulated gradients, so it is deferred: the engine zeroes every gradient at the
  end of each group anyway (decision: gradients never leak from one engine step into the next).
- A group in which no optimizer stepped is one line (a manual step that never steps would train
  nothing, silently). Checkpoints, exact resume and pre-flight's restore are the same as in
  automatic mode.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.optimizers import ONE, Schedules, average_gradients, broadcast_state
from utils import distributed
from utils.errors import UserError


class ManualSteps:
    """The state of the accumulation group a manual step runs in, shared by the wrappers."""

    def __init__(
        self, optimizers: dict[str, torch.optim.Optimizer], params: dict[str, list[torch.Tensor]], precision: Any, clip: float | None
    ):
        self.params, self.precision, self.clip = params, precision, clip
        self.optimizers = {name: ManualOptimizer(self, name, optimizer) for name, optimizer in optimizers.items()}
        self.group_size, self.last_in_group = 1, True
        self.stepped: set[str] = set()

    def begin(self, group_size: int, last_in_group: bool) -> None:
        self.group_size, self.last_in_group = group_size, last_in_group

    def backward(self, loss: torch.Tensor, optimizer: str | None = None, retain_graph: bool | None = None) -> None:
        if optimizer is not None and optimizer not in self.params:
            raise UserError(f"self.backward: no optimizer is named {optimizer!r}; the optimizers are {', '.join(self.params)}")
        loss = loss / self.group_size if self.group_size > 1 else loss
        scaled = self.precision.scaler.scale(loss) if self.precision.scaler is not None else loss
        if optimizer is None:
            scaled.backward(retain_graph=retain_graph)
        else:
            torch.autograd.backward(scaled, inputs=self.params[optimizer], retain_graph=retain_graph)

    def real_step(self, name: str) -> None:
        if distributed.is_distributed():
            average_gradients(self.params[name])
        self.precision.step(self.optimizers[name].optimizer, self.params[name], self.clip, update=False)
        self.stepped.add(name)

    def end_group(self, step: int, schedule: Any, module: torch.nn.Module) -> None:
        """After a group's last micro-batch: every gradient zeroed, the scaler moved once, the per-step
        schedules of the optimizers that stepped, rank 0's buffers to every process."""
        stepped = frozenset(self.stepped)
        self.stepped.clear()
        for wrapper in self.optimizers.values():
            wrapper.optimizer.zero_grad(set_to_none=True)
        if not stepped:
            raise UserError(
                f"training_step: manual optimization (automatic_optimization = False) stepped no optimizer in engine step {step}; "
                f"call self.optimizers[name].step() in it ({', '.join(self.optimizers)}), or set automatic_optimization = True"
            )
        self.precision.update()
        if isinstance(schedule, Schedules):
            schedule.after_optimizer_step(stepped)
        elif ONE in stepped:
            schedule.after_optimizer_step()
        broadcast_state(module, buffers_only=True)


class ManualOptimizer:
    """One optimizer as a manual step sees it: ``step()`` and ``zero_grad()`` that respect accumulation
    (see the module docstring); ``param_groups`` and ``optimizer`` are the real optimizer's."""

    def __init__(self, steps: ManualSteps, name: str, optimizer: torch.optim.Optimizer):
        self.steps, self.name, self.optimizer = steps, name, optimizer

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def step(self) -> None:
        if self.steps.last_in_group and self.name not in self.steps.stepped:
            self.steps.real_step(self.name)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.name in self.steps.stepped:
            self.optimizer.zero_grad(set_to_none=True)
