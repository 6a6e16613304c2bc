"""A run directory: its layout, one process at a time in it, its files read strictly, and no links inside.

**Layout**: ``config.json`` (and a ``config-resume-N.json`` per resume that changed it),
``manifest.json``, ``metrics.jsonl``, ``train.log``, TensorBoard events, ``split.json``,
``trackers.json``, ``.lock`` and ``checkpoints/`` (whose files the checkpoint store names:
``utils.checkpoints.find_checkpoint``). :func:`read_config`, :func:`read_manifest` and
:func:`read_metrics` are the one strict reader of each history file (a resume's
``app/history.py`` and the records of ``app/run_records.py`` both use them).

A new run's directory is made with one ``mkdir`` that fails if it exists (no check-then-create
race). Whoever trains in a run directory holds an exclusive ``fcntl.flock`` on its ``.lock``
file, which names the process; the lock goes away with the process, however it ends. A second
``train.py`` on the same directory (the same ``--run-id``, or resuming a run that is still
running) stops with "... is in use by process N". Filesystem trouble (a read-only or
non-folder ``save_dir``, a name too long) is a one-line :class:`UserError`.

A run directory's own entries are never symbolic links (:func:`refuse_links`, checked before a
resume writes anything, and ``O_NOFOLLOW`` on every file the engine opens in one,
``utils.files.open_own``): a ``train.log`` or ``checkpoints/`` that links elsewhere would make
the run append to, or save checkpoints into, whatever it points at. A file appended to in place
(``train.log``, ``metrics.jsonl``) may not have a second name (a hard link) either. The run
directory itself, and every folder above it (``saved/`` as a link to another disk), may be a link: the rule is
about what is inside. The one exception is the checkpoint store's own ``*.dcp`` links in
``checkpoints/``, which point into the run directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from logger import manifest as logger_manifest
from logger.metrics_file import DamagedHistory, MetricsFile
from utils.errors import UserError
from utils.files import FileLock, file_error, link_refused, read_json, read_text
from utils.files import lock_holder as file_lock_holder

LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"
"""The folder of a run's checkpoints (the checkpoint store, ``utils/checkpoints``, owns what is in it)."""
CONFIG, MANIFEST, METRICS = "config.json", "manifest.json", "metrics.jsonl"
"""The history files every run holds (``logger/run_log.py`` and ``logger/manifest.py`` write them)."""
APPENDED = ("train.log", METRICS, "metrics.superseded.jsonl")
"""The files a resume appends to in place (every other file of a run is replaced by a rename)."""
MAX_METRICS_BYTES = 1 << 30
"""A year of epochs is far below this; more is not a run's ``metrics.jsonl``."""


def read_config(path: Path, fix: str) -> dict:
    """A run's ``config.json`` (or a ``config-resume-N.json``), read strictly: every problem is one line ending with ``fix``."""
    return read_json(path, "run's config", fix)


def read_manifest(run_dir: Path, fix: str) -> dict | None:
    """A run's ``manifest.json``, read strictly (``logger.manifest.read_manifest``, whose lenient mode
    the best-effort readers use); None when it has none (a run older than manifests)."""
    return logger_manifest.read_manifest(run_dir, fix)


def read_metrics(run_dir: Path, fix: str) -> list[dict]:
    """A run's ``metrics.jsonl`` rows, read strictly (``logger/metrics_file.py``: a damaged line is one
    line naming it; a torn last line is not a row); ``[]`` when it has none yet."""
    path = Path(run_dir) / METRICS
    if not os.path.lexists(path):
        return []
    try:
        return MetricsFile.split(read_text(path, "run's metrics", fix, max_bytes=MAX_METRICS_BYTES))[0]
    except DamagedHistory as exc:
        raise UserError(f"{path}: damaged ({exc}); {fix}") from None


def refuse_links(path: Path) -> None:
    """Refuse (one line) a run directory whose entries, or whose ``checkpoints/`` entries, are
    symbolic links (see the module docstring); ``checkpoints/`` links that stay inside it are the store's."""
    path = Path(path)
    try:
        entries = list(os.scandir(path))
    except OSError:
        return  # not there, or not readable: whoever reads it next says so
    for entry in sorted(entries, key=lambda entry: entry.name):
        if entry.is_symlink():
            raise link_refused(Path(entry.path))
        if entry.name in APPENDED and entry.is_file() and entry.stat().st_nlink > 1:
            raise UserError(
                f"run directory: {entry.path} has another name (a hard link), which a resume would append to as well; "
                f"replace it with a copy of its own (cp {entry.name} {entry.name}.copy && mv {entry.name}.copy {entry.name}), then run again"
            )
    checkpoints = path / CHECKPOINTS
    if not checkpoints.is_dir():
        return
    inside = os.path.realpath(path)
    for entry in sorted(os.scandir(checkpoints), key=lambda entry: entry.name):
        if entry.is_symlink() and os.path.commonpath([inside, os.path.realpath(entry.path)]) != inside:
            raise link_refused(Path(entry.path))


def lock_holder(path: Path) -> str | None:
    """The process id written in a locked run directory's lock file, or None when nobody holds it."""
    return file_lock_holder(Path(path) / LOCK_FILE)


class RunDirClaim:
    """A claimed run directory; :meth:`release` (or the process's end) gives it up."""

    def __init__(self, path: Path, created: bool, made: list[Path]):
        self.path = path
        self.created = created
        self._made = made  # folders this claim created, outermost first
        self._lock = FileLock(path / LOCK_FILE)

    @classmethod
    def create(cls, path: Path) -> RunDirClaim:
        """Make a new run directory (and missing parents), already locked; it must not exist.

        The directory is built under a temporary name with its lock taken, then renamed into place:
        a process that loses the race finds the directory there and locked, never half made.
        """
        path = Path(path)
        try:
            made = [folder for folder in reversed([path, *path.parents]) if not folder.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise file_error("trainer.save_dir", path, exc, "choose a writable trainer.save_dir (or shorter names)") from None
        claim = cls(path.with_name(f".{path.name[:200]}.new-{os.getpid()}"), True, made)
        try:
            os.mkdir(claim.path)
        except OSError as exc:
            claim.discard()
            raise file_error("trainer.save_dir", path, exc, "choose a writable trainer.save_dir (or shorter names)") from None
        claim._take_lock()
        if path.exists():  # rename would also replace an empty folder: an existing run directory is never reused
            claim.discard()
            raise cls._taken(path)
        try:
            os.rename(claim.path, path)  # fails if path appeared meanwhile (a non-empty folder, or a file)
        except OSError as exc:
            claim.discard()
            if path.is_dir():
                raise cls._taken(path) from None
            raise file_error("trainer.save_dir", path, exc, "choose another trainer.save_dir or --run-id") from None
        claim.path = path
        return claim

    @staticmethod
    def _taken(path: Path) -> UserError:
        holder = lock_holder(path)
        if holder is not None:
            return UserError(f"--run-id: {path} is in use by process {holder}; choose another --run-id")
        if not path.is_dir():
            return UserError(f"--run-id: {path} is a file; choose another --run-id or trainer.save_dir")
        return UserError(f"--run-id: {path} already exists; choose another --run-id, or resume it with -r {path}/checkpoints/last.pth")

    @classmethod
    def open(cls, path: Path) -> RunDirClaim:
        """Lock an existing run directory (to resume the run in it)."""
        claim = cls(Path(path), False, [])
        claim._take_lock()
        return claim

    def _take_lock(self) -> None:
        self._lock.path = self.path / LOCK_FILE  # a new directory's lock moves with its rename into place
        try:
            holder = self._lock.acquire()
        except OSError as exc:
            if self.created:
                self.discard()
            raise file_error("run directory", self.path, exc, "make the run directory writable to train in it") from None
        if holder is not None:
            raise UserError(f"{self.path}: this run directory is in use by process {holder}; wait for it to end, or stop it first")

    def release(self) -> None:
        self._lock.release()

    def discard(self) -> None:
        """Delete the directory if this claim created it (a new run that trained nothing), and the
        parents it created when they are left empty."""
        self.release()
        if not self.created:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        for folder in reversed(self._made[:-1]):
            try:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            except OSError:
                pass  # another process put something there, or it went meanwhile
        self.created = False
