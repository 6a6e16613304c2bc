"""The newest checkpoint of a run that loads, for ``--auto-resume``: a damaged one is passed over, never removed.

A run's ``checkpoints/`` folder holds ``last`` (rewritten every save) and hard links or snapshot
links to it (``best``, ``epoch-N``). Ordered by when their bytes were written (``last`` first on a
tie), names that share one file or snapshot are tried once; each is read and verified exactly as
``-r`` reads it (:func:`~utils.checkpoints.load_checkpoint`: checksums, truncation, missing shards),
and the first that passes is the one to continue from. What was passed over is reported, one
line each, so the caller can say why it did not continue from ``last``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from utils.checkpoints.state import Checkpoint
from utils.errors import UserError

SUFFIXES = (".pth", ".dcp")


@dataclass
class Found:
    """The checkpoint to continue from (None: the folder holds none that loads) and what was passed over."""

    path: Path | None = None
    checkpoint: Checkpoint | None = None
    skipped: list[str] = field(default_factory=list)
    """One line per damaged candidate, newest first: ``<path>: <why>``."""
    candidates: int = 0


def candidates(folder: Path) -> list[Path]:
    """The checkpoints in ``folder``, newest first, each file or snapshot once."""
    found: list[tuple[float, int, str, Path]] = []
    if not folder.is_dir():
        return []
    for path in folder.iterdir():
        if path.suffix not in SUFFIXES or path.name.startswith("."):
            continue
        try:
            info = path.stat()  # follows a snapshot's link: its folder's time
        except OSError:
            continue  # a dangling link: nothing there to load
        found.append((-info.st_mtime, 0 if path.stem == "last" else 1, path.name, path))
    seen: set[str] = set()
    ordered = []
    for *_, path in sorted(found):
        info = path.stat()
        identity = os.path.realpath(path) if path.is_dir() else f"{info.st_dev}:{info.st_ino}"  # a hard link is its file
        if identity not in seen:
            seen.add(identity)
            ordered.append(path)
    return ordered


def newest_loadable(folder: Path) -> Found:
    """The newest checkpoint in a run's ``checkpoints/`` folder that reads and verifies (see the module docstring)."""
    from utils.checkpoints import load_checkpoint

    found = Found()
    paths = candidates(folder)
    found.candidates = len(paths)
    for path in paths:
        try:
            checkpoint = load_checkpoint(path)
            if checkpoint.is_run:
                checkpoint.require_resumable()
        except UserError as exc:
            found.skipped.append(str(exc))
            continue
        if not checkpoint.is_run:
            found.skipped.append(f"{path}: not a run's checkpoint")
            continue
        found.path, found.checkpoint = path, checkpoint
        return found
    return found
