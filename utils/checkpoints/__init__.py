"""Checkpoints: one store interface, two implementations, chosen once per run.

- :class:`~utils.checkpoints.files.FileStore`: one ``.pth`` per checkpoint (single process, DDP);
- :class:`~utils.checkpoints.snapshots.SnapshotStore`: DCP snapshots, every process writing its
  shards (FSDP).

The engine asks its store to ``save`` a checkpoint from its parts, ``link`` one name to another
(``best`` to ``last``), ``prune`` old ``epoch-N`` ones, and whether it ``accepts`` a checkpoint
to resume; :func:`load_checkpoint` reads either kind for ``-r`` (:func:`newest_loadable`: the newest
of a run's that verifies, for ``--auto-resume``), and
:func:`~utils.checkpoints.state.restore` loads the parts back. Nothing outside this package asks
which kind it is. A checkpoint is data: everything is read with ``torch.load(weights_only=True)``
(DCP's metadata through an allow-list), and every part is checked against its checksum.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from utils.checkpoints.files import FileCheckpoint, FileStore, read_file_checkpoint
from utils.checkpoints.newest import Found, newest_loadable
from utils.checkpoints.state import FORMAT, VERSION, Checkpoint, DcpStateful, Stateful, restore, run_dir_of
from utils.checkpoints.weights import LoadReport, clean_state_dict, load_weights
from utils.errors import UserError
from utils.files import describe_os_error


def open_store(kind: str) -> Any:
    """The store of a run: ``"files"`` or ``"snapshots"`` (the strategy says which, ``trainer/parallel.py``)."""
    if kind == "snapshots":
        from utils.checkpoints.snapshots import SnapshotStore

        return SnapshotStore()
    return FileStore()


_handed: dict[tuple, Checkpoint] = {}


def _identity(path: Path) -> tuple:
    info = path.stat()
    return (os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def hand_over(checkpoint: Checkpoint) -> None:
    """Keep ``checkpoint`` (just read and verified) for the next :func:`load_checkpoint` of the same,
    unchanged file, once: ``--auto-resume`` chose it, and the resume would otherwise read it twice."""
    _handed.clear()
    _handed[_identity(checkpoint.path)] = checkpoint


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A ``.pth`` file or a ``.dcp`` snapshot given to ``-r``, read safely; problems are one line."""
    path = Path(path)
    try:
        if _handed:
            handed = _handed.pop(_identity(path), None)
            _handed.clear()
            if handed is not None:
                return handed
        return _load(path)
    except OSError as exc:  # a name too long, a folder without permission, a file gone meanwhile
        raise UserError(f"{path}: cannot read the checkpoint ({describe_os_error(path, exc, writing=False)}); pass a readable file with -r") from None


SUFFIXES = (FileStore.suffix, ".dcp")
"""How each store names a checkpoint file (``last.pth``, or a ``last.dcp`` snapshot link)."""


def find_checkpoint(folder: Path, name: str) -> Path | None:
    """The checkpoint ``name`` (``best``, ``last``, ``epoch-3``) in a run's ``checkpoints/`` folder, of
    whichever store wrote it, or None: callers ask by name and never spell a store's file names."""
    for suffix in SUFFIXES:
        path = Path(folder) / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def _load(path: Path) -> Checkpoint:
    if path.is_dir():
        from utils.checkpoints.snapshots import SnapshotCheckpoint, is_snapshot

        if is_snapshot(path.resolve()):
            return SnapshotCheckpoint(path)
        raise UserError(f"{path}: a folder, not a checkpoint; pass a .pth file (or a .dcp sharded checkpoint) from a run's checkpoints/ folder")
    return read_file_checkpoint(path)


__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "DcpStateful",
    "FileCheckpoint",
    "Found",
    "LoadReport",
    "Stateful",
    "clean_state_dict",
    "find_checkpoint",
    "hand_over",
    "load_checkpoint",
    "load_weights",
    "newest_loadable",
    "open_store",
    "restore",
    "run_dir_of",
]
