"""The one exception type for mistakes a user can make (config, CLI, files), and how entry
scripts report what escapes them.

Entry scripts catch :class:`UserError` once, print ``error: <message>`` on one line and exit with
code 2. An exception raised inside the user's own code (model, data loader, loss, metric) is a
bug there: its traceback is shown from the user's frame on, with a one-line hint, exit code 1.
Anything else is a bug of the template and keeps its whole traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input; the message is one line naming what to fix."""


def first_line(exc: BaseException, limit: int = 200, last: bool = False) -> str:
    """An exception's message as one line for an error message: its first line (``last``: its last
    non-empty line, where wrappers such as DataLoader workers and DCP put the original error),
    cut to ``limit`` characters; the exception's type name when it has no message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if last else lines[0])[:limit]


def closest(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """A ``did you mean`` suffix naming full key paths (``prefix + candidate``), or an empty string."""
    found = difflib.get_close_matches(name, [str(c) for c in candidates], n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(prefix + f) for f in found)}?" if found else ""


EXIT_USER_ERROR = 2
EXIT_USER_CODE = 1
EXIT_PEER_LOST = 3


class ReportedByRankZero(UserError):
    """An error every process stops for and rank 0 reports: the other ranks exit quietly (exit code
    2), so a torchrun job prints it once."""


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; training stops before any checkpoint is overwritten."""


PEER_LOST = re.compile(
    r"Connection (closed|reset) by peer|Broken pipe|Socket Timeout|Connection refused|ProcessGroup.*(abort|timed out)|"
    r"NCCL communicator was aborted|failed to recv|Timed out waiting",
    re.IGNORECASE,
)


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says another process of a torch.distributed run is gone (killed, out of memory,
    its node lost), rather than anything this process did."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"DistBackendError", "DistNetworkError", "DistStoreError"}) or (
        isinstance(exc, RuntimeError) and bool(PEER_LOST.search(str(exc)))
    )


def report(exc: BaseException, rank: int = 0, grouped: bool = False) -> int:
    """Print ``exc`` the way the module docstring says and return the exit code (re-raise template bugs).

    Under torchrun one process says each error: an error every process stops for is said by rank 0
    (:class:`ReportedByRankZero` elsewhere); before the process group exists (``grouped`` False),
    every process reads the same files, so local rank 0 of each node says what they found. A lost
    peer is one line (exit code 3), even where the failure surfaced inside the user's model.
    """
    from utils.user_code import format_user_bug, user_frame, user_frame_in_text

    rank = rank if grouped else int(os.environ.get("RANK", 0) or 0)
    prefix = f"[rank {rank}] " if rank else ""
    if isinstance(exc, UserError):
        quiet = isinstance(exc, ReportedByRankZero) and rank or (not grouped and int(os.environ.get("LOCAL_RANK", 0) or 0))
        if not quiet:
            print(f"{prefix}error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    if peer_lost(exc):
        print(f"{prefix}error: another process of this run is gone ({first_line(exc, 160)}); it was killed or failed: see its own output", file=sys.stderr)
        return EXIT_PEER_LOST
    if isinstance(exc, Exception) and (user_frame(exc) is not None or user_frame_in_text(exc) is not None):
        print(format_user_bug(exc), file=sys.stderr)
        return EXIT_USER_CODE
    raise exc
