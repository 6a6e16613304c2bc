"""What a sweep worker holds while it works, so that workers never step on each other.

- ``SetupLock``: ``<sweeps>/.<study>.lock``, while a worker opens or creates the study;
- ``SlotTakingLock``: ``<sweep>/.claim`` (a name kept from before), while it takes a slot (or a dead worker's);
- ``SlotLock``: ``<sweep>/.slot-NNNN.lock``, for as long as it trains that slot (a free one, on a
  RUNNING trial, means its worker is gone);
- ``Heartbeat``: the trial's heartbeat in the storage, for workers on machines that share no disk.
"""

from __future__ import annotations

import threading
from pathlib import Path

from logger.logger import get_logger
from utils.errors import first_line
from utils.files import FileLock


class SlotLock(FileLock):
    """``<sweep>/.slot-NNNN.lock``: held by the worker training that slot, for as long as it does."""

    def __init__(self, folder: Path, slot: int):
        super().__init__(folder / f".slot-{slot:04d}.lock")

    def acquire(self) -> bool:  # type: ignore[override]
        """Whether this worker now holds the slot (False: another worker does)."""
        return super().acquire() is None


class SlotTakingLock(FileLock):
    """``<sweep>/.claim``: taking a slot (and taking over a dead worker's) happens under it, so a
    slot that was just taken is never seen as abandoned by another worker on this machine."""

    def __init__(self, folder: Path):
        super().__init__(folder / ".claim", wait=True)

    def __enter__(self) -> SlotTakingLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SetupLock(FileLock):
    """``<sweeps>/.<study>.lock``, beside the sweep folder: the workers of this machine open (or
    create) the study one at a time, so two started together never race to create its tables or its
    folder, and a new sweep that fails can remove its folder without pulling it from under another.
    The file goes when it is released; a waiter that then holds the removed file takes the new one."""

    def __init__(self, path: Path):
        super().__init__(path, wait=True, fresh=True)

    def __enter__(self) -> SetupLock:
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.acquire()
                return self
            except FileNotFoundError:  # the folder went between the mkdir and the open: make it again
                continue

    def __exit__(self, *exc: object) -> None:
        self.release()


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
