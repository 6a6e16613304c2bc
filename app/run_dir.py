"""One process per run directory: created exclusively, locked while a run uses it.

A new run's directory is made with one ``mkdir`` that fails if it exists (no check-then-create
race). Whoever trains in a run directory holds an exclusive ``fcntl.flock`` on its ``.lock``
file, which names the process; the lock goes away with the process, however it ends. A second
``train.py`` on the same directory (the same ``--run-id``, or resuming a run that is still
running) stops with "... is in use by process N". Filesystem trouble (a read-only or
non-folder ``save_dir``, a name too long) is a one-line :class:`UserError`.

A run directory's own entries are never symbolic links (:func:`refuse_links`, checked before a
resume writes anything, and ``O_NOFOLLOW`` on every file the engine opens in one,
``utils.files.open_own``): a ``train.log`` or ``checkpoints/`` that links elsewhere would make
the run append to, or save checkpoints into, whatever it points at. The run directory itself,
and every folder above it (``saved/`` as a link to another disk), may be a link: the rule is
about what is inside. The one exception is the checkpoint store's own ``*.dcp`` links in
``checkpoints/``, which point into the run directory.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from utils.errors import UserError
from utils.files import file_error, link_refused, open_own

LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"
"""The folder of a run's checkpoints (the checkpoint store, ``utils/checkpoints``, owns what is in it)."""


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
    checkpoints = path / CHECKPOINTS
    if not checkpoints.is_dir():
        return
    inside = os.path.realpath(path)
    for entry in sorted(os.scandir(checkpoints), key=lambda entry: entry.name):
        if entry.is_symlink() and os.path.commonpath([inside, os.path.realpath(entry.path)]) != inside:
            raise link_refused(Path(entry.path))


def lock_holder(path: Path) -> str | None:
    """The process id written in a locked run directory's lock file, or None when nobody holds it."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.read(fd, 32).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


class RunDirectory:
    """A claimed run directory; :meth:`release` (or the process's end) gives it up."""

    def __init__(self, path: Path, created: bool, made: list[Path]):
        self.path = path
        self.created = created
        self._made = made  # folders this claim created, outermost first
        self._lock: int | None = None

    @classmethod
    def create(cls, path: Path) -> RunDirectory:
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
    def open(cls, path: Path) -> RunDirectory:
        """Lock an existing run directory (to resume the run in it)."""
        claim = cls(Path(path), False, [])
        claim._take_lock()
        return claim

    def _take_lock(self) -> None:
        lock = self.path / LOCK_FILE
        try:
            fd = open_own(lock, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            if self.created:
                self.discard()
            raise file_error("run directory", self.path, exc, "make the run directory writable to train in it") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{self.path}: this run directory is in use by process {holder}; wait for it to end, or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor drops the flock
            self._lock = None

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
