"""One tracker's background thread: training hands it rows and goes on; it never raises into the run.

The training loop only puts items on a queue (``put``: no I/O, no lock held for long). The thread
takes everything queued and sends it through the adapter: an epoch's row at once, step scalars
gathered for up to :data:`STEP_INTERVAL` seconds (a request per step would cost the training
loop more than it is worth). Any exception there, the library's or
the store's (an unreachable server, a full disk, a deleted run), is one warning line; what was not
sent stays pending and is tried again when the next epoch's row arrives (not at every step, so a
dead server is not hammered), and at the end. Step scalars pending while a tracker fails are
capped; epoch rows are few and all kept. :meth:`Worker.end` waits for the thread at most until a
deadline: a library that hangs is left behind (the thread is a daemon), never waited for forever.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from logger.logger import get_logger
from logger.trackers.tracker import Tracker, describe

MAX_PENDING_STEPS = 10_000
"""Step scalars kept while a tracker is failing or stuck; older ones are dropped first (epoch rows never are)."""
STEP_INTERVAL = 5.0
"""Seconds step scalars may wait to be sent together (an epoch's row sends them at once)."""


class Worker:
    """The background thread of one tracker: sends what training queued, retries what failed at the next epoch,
    and says a failure once."""

    def __init__(self, tracker: Tracker, changed: Callable[[], None]):
        self.tracker = tracker
        self.changed = changed  # writes trackers.json (ids and marks) after each try
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: list[tuple] = []
        self.failure: str | None = None  # the failure being retried, said once
        self.dropped = 0
        self.last_sent = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=f"{tracker.name}-tracker", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.queue.put(("open",))

    def put(self, item: tuple) -> None:
        if item[0] == "step" and (self.done.is_set() or self.queue.qsize() > MAX_PENDING_STEPS):
            self.dropped += 1  # the thread is gone, or stuck in a call that does not return: the queue must not grow without end
            return
        self.queue.put(item)

    def end(self, state: str, files: list[Path], best: Path | None) -> None:
        """Ask the thread to send what is pending, then finish (``state`` ``discarded``: delete) the run."""
        self.queue.put(("end", state, files, best))

    def wait(self, deadline: float) -> bool:
        """Whether the thread finished before ``deadline`` (a ``time.monotonic()`` value)."""
        return self.done.wait(max(0.0, deadline - time.monotonic()))

    # -- the thread ----------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while True:
                wait = max(0.0, self.last_sent + STEP_INTERVAL - time.monotonic()) if self.pending and self.failure is None else None
                try:
                    items = [self.queue.get(timeout=wait)]
                except queue.Empty:
                    items = []  # step scalars waited long enough
                while True:
                    try:
                        items.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                end = next((item for item in items if item[0] == "end"), None)
                urgent = end is not None
                for item in items:
                    if item[0] in ("epoch", "step"):
                        self.pending.append(item)
                    urgent = urgent or item[0] in ("epoch", "open")
                self._cap_steps()
                due = self.failure is None and time.monotonic() - self.last_sent >= STEP_INTERVAL
                if urgent or (due and self.pending):
                    self._try(lambda: self.tracker.log(self.pending))
                    self.last_sent = time.monotonic()
                if end is not None:
                    self._finish(*end[1:])
                    return
        except BaseException as exc:  # noqa: BLE001 - whatever happens here, training goes on
            self._warn(exc)
        finally:
            self.done.set()

    def _finish(self, state: str, files: list[Path], best: Path | None) -> None:
        name = self.tracker.name
        if state == "discarded":
            if self.tracker.is_open:
                self._try(self.tracker.discard, save=False)
            return
        sent = self.failure is None and self.tracker.is_open and self._try(lambda: self.tracker.finish(state, files, best))
        if not sent:
            left = [item[1]["epoch"] for item in self.pending if item[0] == "epoch"]
            what = f"epochs {left[0]}-{left[-1]} were not sent" if left else "the run's end was not recorded"
            get_logger().info("%s tracker: %s (%s); metrics.jsonl and the run directory have everything", name, what, self.failure)

    def _try(self, action: Callable[[], None], save: bool = True) -> bool:
        """Run ``action``; an exception is a warning (once per failure) and False."""
        try:
            action()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a tracker never ends a run
            self._warn(exc)
            return False
        finally:
            if save:
                self.changed()
        if self.failure is not None:
            get_logger().info("%s tracker: working again; what was pending is sent", self.tracker.name)
            self.failure = None
        return True

    def _warn(self, exc: BaseException) -> None:
        text = describe(exc)
        if self.failure is None:
            get_logger().warning("%s tracker: %s; training goes on, and the tracker is tried again at the next epoch", self.tracker.name, text)
        else:
            get_logger().debug("%s tracker: still failing: %s", self.tracker.name, text)
        self.failure = text

    def _cap_steps(self) -> None:
        steps = sum(1 for item in self.pending if item[0] == "step")
        if steps > MAX_PENDING_STEPS:
            drop = steps - MAX_PENDING_STEPS
            kept = []
            for item in self.pending:
                if item[0] == "step" and drop:
                    drop -= 1
                    self.dropped += 1
                    continue
                kept.append(item)
            self.pending[:] = kept
