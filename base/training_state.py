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
from utils.checkpoint import FORMAT, VERSION, clean_state_dict, load_weights
from utils.errors import UserError, first_line
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
            reason = first_line(exc)
            raise UserError(
                f"{self.key}: the checkpoint's {saved} state does not fit this run ({reason}); the parameter groups must be "
                f"the same to resume; start a new run from its weights with -r CHECKPOINT -c CONFIG"
            ) from None


SHARDED_PARTS = ("model", "optimizer", "ema")
"""Parts that a sharded run (FSDP) saves with DCP, each process its own shards (``trainer/fsdp.py``)."""


def capture(trainer: BaseTrainer, meta: dict) -> dict:
    """The checkpoint dict; a collective call under DDP (every process contributes its rank parts)."""
    shared = {name: part.state_dict() for name, part in trainer.state_parts().items()}
    own = {name: part.state_dict() for name, part in trainer.rank_parts().items()}
    return {**_header(meta), **shared, "ranks": distributed.gather_objects(own)}


def capture_sharded(trainer: BaseTrainer, meta: dict) -> tuple[dict, dict, dict]:
    """(DCP state of the sharded parts, the shared parts, this process's parts) of a sharded run."""
    parts = trainer.state_parts()
    shared = {name: part.state_dict() for name, part in parts.items() if name not in SHARDED_PARTS}
    shared["sharded"] = {"optimizer_type": type(trainer.optimizer).__name__, "ema": trainer.ema is not None}
    own = {name: part.state_dict() for name, part in trainer.rank_parts().items()}
    return trainer.sharded_weights().state_dict(), {**_header(meta), **shared}, own


def _header(meta: dict) -> dict:
    return {"format": FORMAT, "version": VERSION, "world_size": distributed.world_size(), **meta}


def restore(trainer: BaseTrainer, checkpoint: Any) -> None:
    """Continue the run ``checkpoint`` describes (a file, or a sharded snapshot). Everything is
    checked and loaded in memory; a mismatch is a :class:`UserError` naming the file and the part,
    raised before the run directory is touched, and so is a damaged part."""
    try:
        _restore(trainer, checkpoint)
    except UserError as exc:
        raise exc if str(checkpoint.path) in str(exc) else UserError(f"{checkpoint.path}: {exc}") from None
    except (KeyError, TypeError, IndexError, ValueError, AttributeError, RuntimeError) as exc:
        reason = f"{type(exc).__name__}: {first_line(exc, 120)}"
        raise UserError(f"{checkpoint.path}: a damaged checkpoint ({reason}); resume from another one (epoch-N, best)") from None


def _restore(trainer: BaseTrainer, checkpoint: Any) -> None:
    checkpoint.require_resumable()
    state = checkpoint.data
    shared, own = trainer.state_parts(), trainer.rank_parts()
    if checkpoint.is_sharded:
        shared = {name: part for name, part in shared.items() if name not in SHARDED_PARTS}
    elif getattr(trainer, "sharded", False):
        raise UserError(
            f"{checkpoint.path}: a single-file checkpoint cannot be resumed with trainer.strategy=fsdp; resume it with ddp, "
            f"or start an fsdp run from its weights with -r {checkpoint.path} -c CONFIG"
        )
    required = [*shared, "world_size"] + ([] if checkpoint.is_sharded else ["ranks"])
    missing = [name for name in required if name not in state]
    if missing:
        raise UserError(f"{checkpoint.path}: incomplete checkpoint, {missing} missing; resume from another file (epoch-N.pth, best.pth)")
    progress = shared.pop("progress")
    progress.load_state_dict(state["progress"])
    mid_epoch = progress.batch_in_epoch > 0
    same_world = state["world_size"] == distributed.world_size()
    if mid_epoch and not same_world:
        raise UserError(
            f"{checkpoint.path}: written mid-epoch by {state['world_size']} process(es); resume it with the same number of processes, "
            f"or from an epoch-end checkpoint (epoch-N)"
        )
    for name, part in shared.items():
        part.load_state_dict(state[name])
    if checkpoint.is_sharded:
        _restore_sharded(trainer, checkpoint)
    rank_state = checkpoint.rank_state(distributed.rank() if same_world else 0)
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


def _restore_sharded(trainer: BaseTrainer, checkpoint: Any) -> None:
    saved = checkpoint.data["sharded"]
    TypedState(trainer.optimizer, "optimizer").check_type(saved["optimizer_type"])
    if saved["ema"] and trainer.ema is None:
        trainer.logger.warning("ema: the checkpoint holds EMA weights, but trainer.ema_decay is null: they are dropped")
    if trainer.ema is not None and not saved["ema"]:
        raise UserError("ema: the checkpoint has no EMA weights but trainer.ema_decay is set; resume with trainer.ema_decay=null")
    trainer.sharded_weights().load(checkpoint.folder, with_ema=trainer.ema is not None)
