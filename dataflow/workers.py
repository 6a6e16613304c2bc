"""DataLoader worker processes and stop signals.

Ctrl-C and a cluster's preemption send SIGINT/SIGTERM to the whole process group, workers
included. torch's own handler would end a worker, and the main process would fail on its next
batch ("worker exited unexpectedly") instead of stopping at a step boundary with a checkpoint.
So workers ignore those signals, and the main process, which handles them, shuts its workers down
(at the end of an epoch, and at exit for any still alive); if it dies, their watchdog ends them.
"""

from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401 - its exit hook must be registered before ours (see _shut_down_live_iterators)
import signal
import weakref
from typing import Any

from utils.seed import seed_worker


def init_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the template's loaders: seeds (``utils/seed.py``) and stop signals ignored."""
    seed_worker(worker_id)
    leave_stops_to_the_main_process(worker_id)


def leave_stops_to_the_main_process(worker_id: int) -> None:
    """Workers ignore SIGINT/SIGTERM sent to the whole process group (Ctrl-C, a cluster's preemption):
    torch's own handler would end them, and the main process would fail on its next batch instead
    of stopping at a step boundary with a checkpoint (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


def track(iterator: Any) -> None:
    """Remember a worker iterator, so that one still alive at exit is shut down (see below)."""
    _LIVE_ITERATORS.add(iterator)


def _shut_down_live_iterators() -> None:
    """At exit, multiprocessing stops leftover workers with SIGTERM, which ours ignore, and would
    then wait for them forever; shut them down the way torch does instead (a done event, then join)."""
    for iterator in list(_LIVE_ITERATORS):
        shut_down(iterator)


atexit.register(_shut_down_live_iterators)  # after multiprocessing.util's hook (imported above), so it runs before it


def shut_down(iterator: Any) -> None:
    """Stop a worker iterator's processes now (torch's own shutdown; idempotent), or close a generator."""
    stop = getattr(iterator, "_shutdown_workers", None) or getattr(iterator, "close", None)
    if stop is not None:
        stop()
