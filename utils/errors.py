"""The one exception type for mistakes a user can make (config, CLI, files), and how entry
scripts report what escapes them.

Entry scripts catch :class:`UserError` once, print ``error: <message>`` on one line and exit with
code 2. An exception raised inside the user's own code (model, data loader, loss, metric) is a
bug there: its traceback is shown from the user's frame on, with a one-line hint, exit code 1.
Anything else is a bug of the template and keeps its whole traceback.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """A mistake in the user's input; the message is one line naming what to fix."""


EXIT_USER_ERROR = 2
EXIT_USER_CODE = 1


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; training stops before any checkpoint is overwritten."""


def report(exc: BaseException, rank: int = 0) -> int:
    """Print ``exc`` the way the module docstring says and return the exit code (re-raise template bugs)."""
    from utils.user_code import format_user_bug, user_frame, user_frame_in_text

    prefix = f"[rank {rank}] " if rank else ""
    if isinstance(exc, UserError):
        print(f"{prefix}error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    if isinstance(exc, Exception) and (user_frame(exc) is not None or user_frame_in_text(exc) is not None):
        print(format_user_bug(exc), file=sys.stderr)
        return EXIT_USER_CODE
    raise exc
