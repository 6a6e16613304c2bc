"""The stateful parts of a training run that are not objects of their own: RNG states, a model's
weights, an optimizer's or scheduler's state with its class name, and the data position.

Every part saves and restores itself (``state_dict()`` / ``load_state_dict(state)``), like the
Trainer's other parts (progress, monitor, precision, EMA, losses, metrics); the checkpoint store
(``utils/checkpoints/``) assembles a checkpoint from them and restores them, in the order the
Trainer declares them. The weights and the optimizer also offer ``dcp_state_dict()`` /
``load_dcp_state_dict(state)``: their tensors as torch's distributed checkpoint wants them (full
names, sharded under FSDP), which the snapshot store writes and reshards on load.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from base.progress import Progress
from utils.checkpoints import clean_state_dict, load_weights
from utils.errors import UserError, first_line
from utils.seed import get_rng_state, set_rng_state


class RngState:
    """Python, NumPy, torch and CUDA generator states of this process."""

    def state_dict(self) -> dict:
        return get_rng_state()

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state)


class ModelWeights:
    """A model's weights without wrapper prefixes; restoring requires every weight to match."""

    def __init__(self, module: nn.Module, source: str = "checkpoint"):
        self.module, self.source = module, source

    def state_dict(self) -> dict:
        return clean_state_dict(self.module.state_dict())

    def load_state_dict(self, state: dict) -> None:
        load_weights(self.module, state, strict=True, source=self.source)

    def dcp_state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.module)

    def load_dcp_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.module, state)


class TypedState:
    """An optimizer's or scheduler's state with its class name, so a resume with another class is
    refused by name instead of failing somewhere inside the class."""

    def __init__(self, obj: Any, key: str):
        self.obj, self.key = obj, key

    def state_dict(self) -> dict | None:
        if self.obj is None:
            return None
        return {"type": type(self.obj).__name__, "state": self.obj.state_dict()}

    def check_type(self, saved: str | None) -> None:
        mine = type(self.obj).__name__ if self.obj is not None else None
        if mine != saved:
            raise UserError(
                f"{self.key}: the checkpoint holds the state of {saved or 'no ' + self.key}, this config builds {mine or 'none'}; "
                f"resume with the run's {self.key}, or start a new run from its weights with -r CHECKPOINT -c CONFIG"
            )

    def load_state_dict(self, state: dict | None) -> None:
        saved = state["type"] if state else None
        self.check_type(saved)
        if self.obj is None:
            return
        try:
            self.obj.load_state_dict(state["state"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UserError(
                f"{self.key}: the checkpoint's {saved} state does not fit this run ({first_line(exc)}); the parameter groups must be "
                f"the same to resume; start a new run from its weights with -r CHECKPOINT -c CONFIG"
            ) from None


class OptimizerState(TypedState):
    """The optimizer's part; for DCP its state is keyed by parameter names (so it reshards), beside its class name."""

    def __init__(self, optimizer: Any, module: nn.Module):
        super().__init__(optimizer, "optimizer")
        self.module = module

    def dcp_state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return {"type": type(self.obj).__name__, "state": get_optimizer_state_dict(self.module, self.obj)}

    def load_dcp_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        self.check_type(state["type"])
        set_optimizer_state_dict(self.module, self.obj, state["state"])


class DataPosition:
    """The data source's part: what it must match, and where a stream stands, to continue the epoch
    that ``progress`` (restored before it) says is in progress."""

    def __init__(self, data: Any, progress: Progress):
        self.data, self.progress = data, progress

    def state_dict(self) -> Any:
        return self.data.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.data.load_state_dict(state, self.progress.batch_in_epoch > 0)
