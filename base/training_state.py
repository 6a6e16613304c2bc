"""One resume state: a checkpoint is assembled from the Trainer's stateful parts in one function,
:func:`capture`, and restored by one function, :func:`restore`.

Every part that must survive a restart has ``state_dict()`` / ``load_state_dict()`` and is named
once, in ``BaseTrainer.state_parts()`` (shared by all processes: weights, optimizer, scheduler,
precision, progress, monitor, EMA) or ``BaseTrainer.rank_parts()`` (each process's own: RNG
states, data position, the running loss and metric state of an unfinished epoch). The checkpoint
is then ``{part name: its state}`` plus ``ranks`` (one such dict per process), ``format``,
``version``, ``world_size`` and what the caller adds (``config``, ``arch``). Everything in it is
tensors and plain Python values, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from utils import distributed
from utils.checkpoint import FORMAT, VERSION, Checkpoint, clean_state_dict, load_weights
from utils.errors import UserError
from utils.seed import get_rng_state, set_rng_state

if TYPE_CHECKING:
    from base.base_trainer import BaseTrainer


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


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


class TypedState:
    """An optimizer's or scheduler's state with its class name, so a resume with another class is
    refused by name instead of failing somewhere inside the class."""

    def __init__(self, obj: Any, key: str):
        self.obj, self.key = obj, key

    def state_dict(self) -> dict | None:
        if self.obj is None:
            return None
        return {"type": type(self.obj).__name__, "state": self.obj.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        mine = type(self.obj).__name__ if self.obj is not None else None
        saved = state["type"] if state else None
        if mine != saved:
            raise UserError(
                f"{self.key}: the checkpoint holds the state of {saved or 'no ' + self.key}, this config builds {mine or 'none'}; "
                f"resume with the run's {self.key}, or start a new run from its weights with -r CHECKPOINT -c CONFIG"
            )
        if self.obj is None:
            return
        try:
            self.obj.load_state_dict(state["state"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(
                f"{self.key}: the checkpoint's {saved} state does not fit this run ({reason}); the parameter groups must be "
                f"the same to resume; start a new run from its weights with -r CHECKPOINT -c CONFIG"
            ) from None


def capture(trainer: BaseTrainer, meta: dict) -> dict:
    """The checkpoint dict; a collective call under DDP (every process contributes its rank parts)."""
    shared = {name: part.state_dict() for name, part in trainer.state_parts().items()}
    own = {name: part.state_dict() for name, part in trainer.rank_parts().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "world_size": distributed.world_size(),
        **meta,
        **shared,
        "ranks": distributed.gather_objects(own),
    }


def restore(trainer: BaseTrainer, checkpoint: Checkpoint) -> None:
    """Continue the run ``checkpoint`` describes. Everything is checked and loaded in memory; a
    mismatch is a :class:`UserError` naming the part, raised before the run directory is touched."""
    checkpoint.require_resumable()
    state = checkpoint.data
    shared, own = trainer.state_parts(), trainer.rank_parts()
    missing = [name for name in [*shared, "ranks", "world_size"] if name not in state]
    if missing:
        raise UserError(f"{checkpoint.path}: incomplete checkpoint, {missing} missing; resume from another file (epoch-N.pth, best.pth)")
    progress = shared.pop("progress")
    progress.load_state_dict(state["progress"])
    mid_epoch = progress.batch_in_epoch > 0
    same_world = state["world_size"] == distributed.world_size()
    if mid_epoch and not same_world:
        raise UserError(
            f"{checkpoint.path}: written mid-epoch by {state['world_size']} process(es); resume it with the same number of processes, "
            f"or from an epoch-end checkpoint (epoch-N.pth)"
        )
    for name, part in shared.items():
        part.load_state_dict(state[name])
    rank_state = state["ranks"][distributed.rank() if same_world else 0]
    for name, part in own.items():
        if name == "data":
            part.load_state_dict(rank_state[name], mid_epoch)
        elif name == "rng" or mid_epoch:
            part.load_state_dict(rank_state[name])
    if not same_world:
        trainer.logger.warning(
            "checkpoint written by %d process(es), resuming with %d: data order is kept, RNG streams are not",
            state["world_size"],
            distributed.world_size(),
        )
