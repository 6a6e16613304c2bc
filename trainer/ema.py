"""An exponential moving average (EMA) of the trainable weights: ``trainer.ema_decay``.

After every optimizer step, ``ema = ema + (1 - decay) * (weights - ema)`` in one
``torch._foreach_lerp_`` over all tensors on their device (no Python loop per parameter, no
host sync). Every DDP process applies the same update to the same weights, so the averages are
identical on all ranks; under FSDP the averages are sharded like the weights they follow.

With ``trainer.ema_warmup`` the decay of step ``t`` is ``min(ema_decay, (1 + t) / (10 + t))``,
so the first averages follow the weights instead of their random start. Validation (and so
``best.pth``), ``test.py``, ``predict.py`` and export use the averages when
``trainer.ema_evaluate`` is true; BatchNorm statistics are the model's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from utils.checkpoints import clean_state_dict
from utils.errors import UserError


class EMA:
    """An exponential moving average of the trainable weights, updated after every optimizer step on the
    device; checkpointed, identical on DDP processes, sharded under FSDP."""

    def __init__(self, module: nn.Module, decay: float, warmup: bool = False):
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        self.names = list(clean_state_dict(dict(named)))
        self.params = [p for _, p in named]
        self.decay, self.warmup = decay, warmup
        with torch.no_grad():
            self.averages = [p.detach().clone() for p in self.params]
            # The update works on plain tensors: under FSDP each process's shard of the weights and
            # of the averages (a DTensor has no sharding rule for ``_foreach_copy_``, and a local
            # update is the same numbers with no dispatch through DTensor). The weights' views are
            # detached and share their memory, which the optimizer updates in place, so the update
            # needs no ``no_grad`` block either (a block's enter and exit cost more than the small
            # model's update itself). A weight whose ``.data`` is replaced after this point is no
            # longer followed; :meth:`check_follows` says so before any use of the averages.
            self.followed = [_local(p.detach()) for p in self.params]
            self.local_averages = [_local(a) for a in self.averages]

    def decay_at(self, step: int) -> float:
        """The decay of the update after optimizer step ``step`` (0-based)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    def update(self, step: int) -> None:
        torch._foreach_lerp_(self.local_averages, self.followed, 1.0 - self.decay_at(step))

    def check_follows(self) -> None:
        """Fail if a weight was replaced (``param.data = ...``, ``module.to()``) after the EMA was built."""
        with torch.no_grad():
            if any(view.data_ptr() != _local(p).data_ptr() for view, p in zip(self.followed, self.params)):
                raise UserError(
                    "ema: a model weight was replaced after the Trainer was built (a param.data assignment or module.to()), "
                    "so the EMA weights stopped following it; move or change the model before building the Trainer"
                )

    @contextlib.contextmanager
    def applied(self, module: nn.Module) -> Iterator[None]:
        """The averages in place of the weights inside the block; the weights exactly as before after it."""
        self.check_follows()
        with torch.no_grad():
            kept = [view.clone() for view in self.followed]
            torch._foreach_copy_(self.followed, self.local_averages)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.followed, kept)

    def state_dict(self) -> dict:
        self.check_follows()
        return {"decay": self.decay, "weights": {name: t.detach().cpu() for name, t in zip(self.names, self.averages)}}

    def dcp_state_dict(self) -> dict:
        """The averages themselves (sharded like the weights under FSDP), filled in place by a DCP load."""
        self.check_follows()
        return {"decay": self.decay, "weights": dict(zip(self.names, self.averages))}

    def load_dcp_state_dict(self, state: dict) -> None:
        """The averages were loaded in place; nothing more to do."""

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            raise UserError("ema: the checkpoint has no EMA weights but trainer.ema_decay is set; resume with trainer.ema_decay=null")
        weights = state["weights"]
        missing = [name for name in self.names if name not in weights]
        if missing:
            raise UserError(f"ema: the checkpoint's EMA weights lack {missing[:5]}; resume with the run's model")
        with torch.no_grad():
            for name, average in zip(self.names, self.averages):
                average.copy_(weights[name])


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP) tensor's local shard (called without grad, the shard itself, not a copy); any other tensor itself."""
    return tensor.to_local() if callable(getattr(tensor, "to_local", None)) else tensor
