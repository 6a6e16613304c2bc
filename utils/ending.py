"""One way for every entry script to end.

``train.py``, ``test.py``, ``predict.py``, ``sweep.py``, ``runs.py`` and ``new_project.py`` each
start with :func:`catch_signals` (before their heavy imports), run their body through
:func:`finish`, and leave through :func:`leave`. The exit code, the one-line error, what a signal
does and the clean-up are decided here; what differs between scripts (taking back a half-made run,
printing the command that resumes it, releasing an output file) is a hook of :class:`Hooks`.

Exit codes (the README's table): 0 done; 1 a bug in the user's own code (its traceback and a hint
naming the user's file and line); 2 a user error (one ``error:`` line); 3 another process of the
run is gone; 128 + the signal's number when SIGINT or SIGTERM stopped the script.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from utils.signals import StartupStopped, StopRequest, exit_on_signals, exit_quietly


def _nothing(*args) -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    """What one script adds to the common ending; every hook is optional.

    ``stopped(signum)`` takes back what a start that a signal cut short had made and returns the
    line to print (``None``: the default "nothing was created"); ``interrupted()`` does the same
    for a second Ctrl-C; ``failed(exc, peer_lost)`` runs before an error is reported (log it to the
    run's own file, name the intact checkpoint); ``cleanup()`` always runs, last; ``after_stop(signum,
    code)`` has the last word on the exit code of a start a signal cut short (train.py requeues a
    Slurm job stopped by its requeue signal).
    """

    stopped: Callable[[int], str | None] = _nothing
    interrupted: Callable[[], None] = _nothing
    failed: Callable[[BaseException, bool], None] = _nothing
    cleanup: Callable[[], None] = _nothing
    after_stop: Callable[[int, int], int] = lambda signum, code: code


def catch_signals(stop: StopRequest | None) -> None:
    """The first line of a script, before it imports torch: a script that saves work (``stop``
    given: train.py, sweep.py) exits at once on a signal while nothing exists yet, and later stops
    as its phase says (:mod:`utils.signals`); a script with nothing to save ends at once, any time."""
    if stop is None:
        exit_on_signals()
    else:
        stop.install(mode="exit")


def starting(stop: StopRequest | None) -> None:
    """Where ``main`` begins (also when a test calls it in-process): signals are caught, a signal
    now stops the start at once, and under torchrun a worker whose launcher dies stops too."""
    from utils import distributed
    from utils.signals import watch_launcher

    if stop is not None:
        if not stop.installed:
            stop.install()
        stop.while_starting()
    if distributed.launched_by_torchrun():
        watch_launcher()


def finish(body: Callable[[], int], stop: StopRequest | None = None, hooks: Hooks = Hooks(), restore_signals: bool = True) -> int:
    """Run ``body`` and turn how it ended into the exit code: its own code; a signal during the
    start (:class:`StartupStopped`) or a second Ctrl-C; a user error, a bug in the user's code or
    a lost peer (:func:`utils.errors.report`; a bug of the template's own propagates with its
    traceback). The process group is closed on every path (without waiting for a peer that is
    gone), and ``restore_signals`` gives SIGINT/SIGTERM back to a caller in the same process."""
    from utils.errors import peer_lost, report

    lost = False
    try:
        return body()
    except StartupStopped as stopped:
        if stop is not None:
            stop.signum = stopped.signum
        line = hooks.stopped(stopped.signum)
        print(line or f"stopped by {signal.Signals(stopped.signum).name} during start-up; nothing was created", file=sys.stderr)
        return hooks.after_stop(stopped.signum, 128 + stopped.signum)
    except KeyboardInterrupt:
        hooks.interrupted()
        print("error: interrupted twice; stopped at once", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as exc:
        lost = peer_lost(exc)
        hooks.failed(exc, lost)
        group = _process_group()
        return report(exc, group.rank(), group.is_distributed()) if group else report(exc)
    finally:
        try:
            hooks.cleanup()
        finally:
            if group := _process_group():
                group.cleanup(wait=not lost)
            if restore_signals and stop is not None:
                stop.restore()


def _process_group():
    """:mod:`utils.distributed` where torch.distributed is loaded (a script that never imported
    torch, ``new_project.py``, has no process group and does not pay for the import)."""
    if "torch.distributed" not in sys.modules:
        return None
    from utils import distributed

    return distributed


def leave(main: Callable[[], int]) -> None:
    """The ``__main__`` block: run ``main`` and exit with its code, which a signal that ended the
    script at once (:func:`~utils.signals.exit_on_signals`) or argparse's own exit replaces; from
    here on signals are ignored, so a second Ctrl-C while Python shuts down cannot change it."""
    try:
        code = main()
    except SystemExit as ended:
        code = ended.code
    exit_quietly(code)
