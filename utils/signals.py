"""SIGINT/SIGTERM become a polite stop request: finish the step, checkpoint, exit.

Clusters send SIGTERM before preemption; Ctrl-C sends SIGINT. A second SIGINT stops at once.
"""

from __future__ import annotations

import signal


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> StopRequest:
        """Catch SIGINT/SIGTERM from now on (a request received before is forgotten)."""
        self.signum = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


def exit_on_signals() -> None:
    """For scripts with nothing to save (``test.py``, ``predict.py``): SIGINT/SIGTERM end the
    process at once with exit code 128 + signal, through ``SystemExit`` (``finally`` blocks run,
    temporary files go; results are only ever written by a rename, so nothing is half-written)."""

    def leave(signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, leave)
