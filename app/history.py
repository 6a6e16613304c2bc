"""A run directory's history, read strictly before a resume touches it, and put back if the resume fails.

A resume appends to a run's history (``train.log``, ``metrics.jsonl``, ``manifest.json``,
TensorBoard events, a ``config-resume-N.json``). Before anything is written:

- :meth:`ResumedHistory.read` refuses a run directory with a symbolic link among its entries
  (``app/run_dir.py``: a link would be written through), reads ``config.json``, ``manifest.json`` and ``metrics.jsonl`` strictly
  (not JSON, not a mapping, a folder in their place, a damaged row: one line naming the file and
  the fix) and checks that the run directory and its ``checkpoints/`` can be written to;
- :class:`ResumeGuard` notes what the run directory holds. If the resume fails before training
  starts (a full disk, a peer that is lost, a signal), every file it added is removed and every
  file it changed gets its bytes back, so a failed resume leaves the run directory as it was.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from app.run_dir import CHECKPOINTS, CONFIG, LOCK_FILE, MANIFEST, METRICS, read_config, read_manifest, read_metrics, refuse_links
from logger.logger import close_log_files
from utils.errors import UserError

REWRITTEN = (CONFIG, MANIFEST, METRICS, "metrics.superseded.jsonl", LOCK_FILE)
"""Files a resume may replace or append to that are small enough to keep a copy of."""


@dataclass
class ResumedHistory:
    """A run directory's history (config, manifest, metrics rows), read strictly before a resume touches it, so
    a damaged file stops the resume instead of being rewritten."""

    run_dir: Path
    config: dict | None
    manifest: dict | None
    rows: list[dict]

    @classmethod
    def read(cls, run_dir: Path, checkpoint: str) -> ResumedHistory:
        fix = f"repair it, or start a new run from the checkpoint with -r {checkpoint} -c CONFIG"
        refuse_links(run_dir)  # nothing is read through a link, and nothing will be written through one
        config = read_config(run_dir / CONFIG, fix) if os.path.lexists(run_dir / CONFIG) else None
        manifest = read_manifest(run_dir, fix)
        rows = read_metrics(run_dir, fix)
        for folder in (run_dir, run_dir / CHECKPOINTS):
            if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
                raise UserError(f"run directory: cannot write in {folder} ({_why(folder)}); make it writable to resume there, or {fix.split(', or ')[1]}")
        for name in ("train.log", METRICS, MANIFEST):
            if (run_dir / name).is_file() and not os.access(run_dir / name, os.W_OK):
                raise UserError(f"run directory: cannot write {run_dir / name} (no permission); make it writable to resume there")
        return cls(run_dir, config, manifest, rows)


def _why(folder: Path) -> str:
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "the file system is read-only"
    return "no permission to write there"


class ResumeGuard:
    """What a run directory holds before a resume starts writing, to put back if it fails (see the module docstring)."""

    def __init__(self, run_dir: Path, lock: bytes | None):
        """Taken once the run directory is locked; ``lock`` is what its lock file held before."""
        self.run_dir = run_dir
        self.present = set(os.listdir(run_dir))  # every entry, links too: only what is not here is removed
        self.files: dict[str, tuple[int, bytes | None, int]] = {}
        for path in run_dir.iterdir():
            if path.is_file() and not path.is_symlink():
                info = path.stat()
                data = path.read_bytes() if path.name in REWRITTEN or info.st_size < (1 << 20) else None
                self.files[path.name] = (info.st_size, data, info.st_mode & 0o7777)
        if lock is not None:
            self.files[".lock"] = (len(lock), lock, (run_dir / ".lock").stat().st_mode & 0o7777)
        else:
            self.files.pop(".lock", None)
            self.present.discard(".lock")
        checkpoints = run_dir / CHECKPOINTS
        self.checkpoints = set(os.listdir(checkpoints)) if checkpoints.is_dir() else set()

    def roll_back(self) -> None:
        """Remove what the resume added and give back what it changed (best effort, never raises)."""
        close_log_files()  # train.log is written through a handler: closed before it is cut back
        for path in list(self.run_dir.iterdir()):
            with contextlib.suppress(OSError):
                if path.name not in self.present and (path.is_symlink() or path.is_file()):
                    path.unlink()
                elif path.name in self.files and path.is_file() and not path.is_symlink():
                    size, data, mode = self.files[path.name]
                    if data is not None and path.read_bytes() != data:
                        path.write_bytes(data)
                    elif data is None and path.stat().st_size != size:
                        os.truncate(path, size)  # append-only (train.log, events): cut back to what it was
                    if path.stat().st_mode & 0o7777 != mode:
                        path.chmod(mode)  # a file replaced by a rename came back with the default mode
        checkpoints = self.run_dir / CHECKPOINTS
        if checkpoints.is_dir():
            for name in set(os.listdir(checkpoints)) - self.checkpoints:
                with contextlib.suppress(OSError):
                    (checkpoints / name).unlink()
