"""What every checkpoint is: a header and named parts, each saved and restored by the part itself.

A *part* is anything with ``state_dict()`` and ``load_state_dict(state)`` (:class:`Stateful`):
the engine names its parts once (weights, optimizer, scheduler, precision, progress, monitor,
EMA, shared by all processes; RNG states, data position, running loss and metric state, each
process's own). A part whose tensors should be written by every process and resharded on load
(weights and optimizer state under FSDP) also offers ``dcp_state_dict()`` and
``load_dcp_state_dict(state)`` (:class:`DcpStateful`); only the snapshot store uses that.

Both stores (``files.py``, ``snapshots.py``) write the same header (``format``, ``version``,
``world_size``, ``mid_epoch`` and what the engine adds: ``config``, ``arch``) and a checksum of
every part (``checksum.py``), and both return a :class:`Checkpoint` that :func:`restore` loads
parts from, in the order the engine declares them (``progress`` before the data position that
needs it). A part that cannot restore something warns; a checkpoint that does not fit the run
(another optimizer class, a mid-epoch state of another number of processes, a missing part) is a
one-line error naming the file and the part, before the run directory is touched.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from utils.errors import UserError, first_line

FORMAT = "pytorch-template-checkpoint"
VERSION = 3
"""3: per-part checksums and ``mid_epoch`` in the header. Version 2 files resume too (unchecked)."""
HEADER = ("format", "version", "world_size", "mid_epoch", "arch", "config")


class Stateful(Protocol):
    """Anything that survives a restart: a ``state_dict()`` of plain data and a ``load_state_dict(state)`` that
    puts it back."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


@runtime_checkable
class DcpStateful(Protocol):
    """A part saved through torch.distributed.checkpoint (sharded weights and optimizer state under FSDP)."""

    def dcp_state_dict(self) -> Any: ...

    def load_dcp_state_dict(self, state: Any) -> Any: ...


def header(meta: dict, world_size: int, mid_epoch: bool) -> dict:
    return {"format": FORMAT, "version": VERSION, "world_size": world_size, "mid_epoch": mid_epoch, **meta}


class Checkpoint(ABC):
    """A file or snapshot given to ``-r``: a run's checkpoint, or (a file) a bare weights file.

    ``data`` holds the header and the parts kept as plain data (for a file, every part)."""

    is_sharded = False
    path: Path
    data: dict

    @property
    def is_run(self) -> bool:
        return self.data.get("format") == FORMAT

    @property
    def version(self) -> int | None:
        return self.data.get("version", 0) if self.is_run else None

    @property
    def config(self) -> dict | None:
        return self.data.get("config") if self.is_run else None

    def _progress(self, key: str) -> int | None:
        progress = self.data if self.version == 1 else self.data.get("progress")
        value = progress.get(key) if isinstance(progress, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def epoch(self) -> int | None:
        """The epoch it was written in, when it says (a weights file does not)."""
        return self._progress("epoch")

    @property
    def global_step(self) -> int | None:
        """Optimizer steps done when it was written, when it says."""
        return self._progress("global_step")

    @property
    def world_size(self) -> int:
        return self.data["world_size"]

    @property
    def mid_epoch(self) -> bool:
        if "mid_epoch" in self.data:
            return bool(self.data["mid_epoch"])
        return bool(self._progress("batch_in_epoch"))

    @property
    @abstractmethod
    def parts(self) -> set[str]:
        """The names of the parts it holds."""

    @property
    @abstractmethod
    def has_ema(self) -> bool: ...

    @abstractmethod
    def weights(self, ema: bool = True) -> dict:
        """The model's whole state_dict (the EMA weights in place of the raw ones when asked and present)."""

    @abstractmethod
    def load_part(self, name: str, part: Any) -> None:
        """Restore ``part`` from this checkpoint's part ``name``."""

    @abstractmethod
    def rank_state(self, rank: int) -> dict:
        """Process ``rank``'s own parts."""

    def require_resumable(self, versions: tuple[int, ...] = (2, VERSION)) -> None:
        if not self.is_run:
            raise UserError(f"{self.path}: a weights file, not a run's checkpoint; it can be fine-tuned (-r FILE -c CONFIG) or tested, not resumed")
        if self.version not in versions:
            raise UserError(
                f"{self.path}: checkpoint format version {self.version}, and this code resumes version {VERSION}; "
                f"fine-tune from it with -r FILE -c CONFIG, or evaluate it with test.py"
            )


def restore(checkpoint: Checkpoint, shared: dict[str, Stateful], own: dict[str, Stateful], world_size: int, rank: int) -> None:
    """Load ``shared`` and this process's ``own`` parts from ``checkpoint`` (see the module docstring)."""
    try:
        _restore(checkpoint, shared, own, world_size, rank)
    except UserError as exc:
        raise exc if str(checkpoint.path) in str(exc) else UserError(f"{checkpoint.path}: {exc}") from None
    except (KeyError, TypeError, IndexError, ValueError, AttributeError, RuntimeError) as exc:
        reason = f"{type(exc).__name__}: {first_line(exc, 120)}"
        raise UserError(f"{checkpoint.path}: a damaged checkpoint ({reason}); resume from another one (epoch-N, best)") from None


def _restore(checkpoint: Checkpoint, shared: dict[str, Stateful], own: dict[str, Stateful], world_size: int, rank: int) -> None:
    checkpoint.require_resumable()
    missing = [name for name in shared if name not in checkpoint.parts]
    if missing:
        raise UserError(f"{checkpoint.path}: incomplete checkpoint, {missing} missing; resume from another file (epoch-N, best)")
    written_by = checkpoint.world_size
    if checkpoint.mid_epoch and written_by != world_size:
        raise UserError(
            f"{checkpoint.path}: written mid-epoch by {written_by} process(es); resume it with the same number of processes, "
            f"or from an epoch-end checkpoint (epoch-N)"
        )
    for name, part in shared.items():
        checkpoint.load_part(name, part)
    state = checkpoint.rank_state(rank if written_by == world_size else 0)
    lost = [name for name in own if name not in state]
    if lost:
        raise UserError(f"{checkpoint.path}: incomplete checkpoint, the process state lacks {lost}; resume from another file (epoch-N, best)")
    for name, part in own.items():
        if name == "rng" and written_by != world_size:
            continue  # every process would draw rank 0's numbers (the same dropout masks): each keeps its own seed's stream
        part.load_state_dict(state[name])
    if written_by != world_size:
        logging.getLogger("template").warning(
            "checkpoint written by %d process(es), resuming with %d: data order is kept, RNG streams are not", written_by, world_size
        )


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory a checkpoint belongs to (``<run_dir>/checkpoints/<file>``); links are not followed."""
    checkpoint = Path(os.path.abspath(checkpoint))
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
