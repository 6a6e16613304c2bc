"""SIGINT/SIGTERM (and the requeue signal): a stop at once while a run starts, a polite stop once it has a run directory.

Clusters send SIGTERM before preemption; Ctrl-C sends SIGINT; Slurm's ``--signal=B:USR1@120``
sends the requeue signal (:data:`REQUEUE_SIGNAL`, SIGUSR1 unless ``train.py --requeue-signal``
names another) before the time limit: it stops like SIGTERM, and then the job is requeued
(``utils/requeue.py``). What a signal does depends on how far the run is (:attr:`StopRequest.mode`):

- ``"exit"``, while the entry script imports its libraries: nothing exists yet, so the process
  says so and exits at once (128 + signal);
- ``"raise"``, while the run is checked and built (a config read from a slow disk, a data set
  loaded, the pre-flight): :class:`StartupStopped` is raised at once, and the entry script takes
  back whatever was made (nothing is claimed before this phase ends);
- ``"polite"``, once the run directory is about to be claimed and while training: the request is
  noted, the step finishes, a checkpoint is written and the run exits. A second SIGINT stops at once.

Once a signal has stopped the run at once, later ones are ignored (``"ignore"``), so the clean-up
that takes back what was made is not cut short.
"""

from __future__ import annotations

import os
import signal
import threading


class StartupStopped(BaseException):
    """A signal arrived while the run was starting: it stops before anything is claimed."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


REQUEUE_SIGNAL = signal.SIGUSR1
"""The signal that means "save, stop, and requeue this Slurm job" unless ``--requeue-signal`` names another."""


class StopRequest:
    """SIGINT/SIGTERM as a request: at once while the run starts, at the next step (with a checkpoint) while it
    trains; see the module docstring for the phases."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.mode = "polite"
        self._previous: dict[int, object] = {}
        self.requeue_signal: int | None = REQUEUE_SIGNAL

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self, mode: str = "polite") -> StopRequest:
        """Catch SIGINT/SIGTERM and the requeue signal from now on (a request received before is forgotten)."""
        self.signum, self.mode = None, mode
        for signum in self.signals:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)
        return self

    def while_starting(self) -> None:
        """The run is being checked and built: a signal stops it at once (``"raise"``)."""
        self.mode = "raise"

    def while_running(self) -> None:
        """The run directory is claimed (or about to be): a signal stops at a step, with a checkpoint."""
        self.mode = "polite"

    @property
    def signals(self) -> tuple[int, ...]:
        return (signal.SIGINT, signal.SIGTERM) + ((self.requeue_signal,) if self.requeue_signal else ())

    def use_requeue_signal(self, signum: int | None) -> None:
        """Make ``signum`` the requeue signal (None: none); the handlers move with it when installed."""
        if signum == self.requeue_signal:
            return
        if self.installed and self.requeue_signal in self._previous:
            signal.signal(self.requeue_signal, self._previous.pop(self.requeue_signal))
        self.requeue_signal = signum
        if self.installed and signum is not None:
            self._previous.setdefault(signum, signal.signal(signum, self._handle))

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.mode == "exit":
            os.write(2, f"stopped by {signal.Signals(signum).name} during start-up; nothing was created\n".encode())
            os._exit(128 + signum)
        if self.mode == "ignore":  # already stopping at once: the clean-up is not interrupted again
            return
        if self.mode == "raise":
            self.signum, self.mode = signum, "ignore"
            raise StartupStopped(signum)
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            self.mode = "ignore"
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


def watch_launcher(grace: float = 60.0, interval: float = 1.0) -> None:
    """Under a launcher (torchrun), stop when the launcher is gone: a worker whose launcher was
    killed would otherwise stay, idle and holding its GPU. It is sent SIGTERM (a checkpoint at the
    next step), and if it has not ended ``grace`` seconds later (waiting on a peer that is gone),
    it ends at once. A daemon thread; a no-op when the parent is init already."""
    parent = os.getppid()
    if parent <= 1:
        return

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(interval)
        os.write(2, b"the launcher of this process is gone; stopping (a checkpoint at the next step)\n")
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(grace)
        os.write(2, f"stopped: the launcher is gone and the run did not end within {grace:.0f} s\n".encode())
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def exit_on_signals() -> None:
    """For scripts with nothing to save (``test.py``, ``predict.py``): SIGINT/SIGTERM end the
    process at once with exit code 128 + signal, through ``SystemExit`` (``finally`` blocks run,
    temporary files go; results are only ever written by a rename, so nothing is half-written)."""

    def leave(signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, leave)


def exit_quietly(code: int) -> None:
    """End the script with ``code``, ignoring SIGINT/SIGTERM from here on: Python gives signals
    their default action back while it shuts down, so a second Ctrl-C during those moments would
    kill the process with a traceback-less but wrong status instead of the one it was leaving with."""
    for signum in (signal.SIGINT, signal.SIGTERM, REQUEUE_SIGNAL):
        signal.signal(signum, signal.SIG_IGN)
    raise SystemExit(code)
