"""What a sweep worker holds while it works, so that workers never step on each other.

- ``SetupLock``: ``<sweeps>/.<study>.lock``, while a worker opens or creates the study;
- ``FolderLock``: ``<sweep>/.claim``, while it takes a slot (or a dead worker's);
- ``SlotLock``: ``<sweep>/.slot-NNNN.lock``, for as long as it trains that slot (a free one, on a
  RUNNING trial, means its worker is gone);
- ``Heartbeat``: the trial's heartbeat in the storage, for workers on machines that share no disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path

from logger.logger import get_logger
from utils.errors import first_line
from utils.files import same_file


class SlotLock:
    """``<sweep>/.slot-NNNN.lock``: held by the worker training that slot, for as long as it does."""

    def __init__(self, folder: Path, slot: int):
        self.path = folder / f".slot-{slot:04d}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FolderLock:
    """``<sweep>/.claim``: taking a slot (and taking over a dead worker's) happens under it, so a
    slot that was just taken is never seen as abandoned by another worker on this machine."""

    def __init__(self, folder: Path):
        self.path = folder / ".claim"

    def __enter__(self) -> FolderLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class SetupLock:
    """``<sweeps>/.<study>.lock``, beside the sweep folder: the workers of this machine open (or
    create) the study one at a time, so two started together never race to create its tables or its
    folder, and a new sweep that fails can remove its folder without pulling it from under another.
    The file goes when it is released; a waiter that then holds the removed file takes the new one."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> SetupLock:
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if same_file(fd, self.path):
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)


class Heartbeat:
    """Records the running trial's heartbeat in the storage every ``interval`` seconds (a thread)."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        if self.interval:
            self.beat()
            self.thread = threading.Thread(target=self._loop, name="sweep-heartbeat", daemon=True)
            self.thread.start()
        return self

    def beat(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception as exc:  # a busy or unreachable database: the next beat tries again
            get_logger().warning("sweep: could not record the trial's heartbeat (%s); trying again in %d s", first_line(exc), self.interval)

    def _loop(self) -> None:
        while not self.done.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
