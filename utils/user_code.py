"""Telling the user's code from the template's, so a bug in a user's model, data loader, loss or
metric is shown as a traceback into the user's file, and not blamed on the config.

User code is any Python file that is neither the template's own (``app/``, ``base/``, ``dataflow/``,
``trainer/``, ``utils/``, ``logger/`` and the entry scripts) nor part of Python or an installed library:
the project's ``model/``, ``data_loader/``, ``tests/``, ``benchmarks/``, and code on the user's
own path.
"""

from __future__ import annotations

import re
import sys
import sysconfig
import traceback
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENGINE = [PROJECT_ROOT / name for name in ("app", "base", "dataflow", "trainer", "utils", "logger")]
ENGINE += [PROJECT_ROOT / f"{name}.py" for name in ("train", "test", "predict", "sweep", "runs", "new_project")]
_LIBRARY_ROOTS = {Path(p).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_paths().get(key))}
_LIBRARY_ROOTS |= {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), PROJECT_ROOT / ".venv"}


def is_user_file(filename: str) -> bool:
    if not filename or filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    if any(path == root or root in path.parents for root in ENGINE):
        return False
    return not any(root in path.parents for root in _LIBRARY_ROOTS)


def user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of user code in ``exc``'s traceback, or None when it never ran user code."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if is_user_file(frame.filename)]
    return frames[-1] if frames else None


_FRAME_TEXT = re.compile(r'File "([^"]+)", line (\d+)')


def user_frame_in_text(exc: BaseException) -> tuple[str, int] | None:
    """The innermost user frame named in ``exc``'s message: a DataLoader worker's exception comes
    back in the main process with the worker's traceback as text."""
    found = [(name, int(line)) for name, line in _FRAME_TEXT.findall(str(exc)) if is_user_file(name)]
    return found[-1] if found else None


def raised_in_user_code(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` is user code: the user's own line raised it (rather
    than a library the user's code called)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and is_user_file(frames[-1].filename)


def relative(filename: str) -> str:
    path = Path(filename).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if PROJECT_ROOT in path.parents else str(path)


def format_user_bug(exc: BaseException) -> str:
    """The traceback from the first user frame down (the template's calling frames trimmed), then a
    hint line; for a DataLoader worker's exception, its message holds the worker's traceback."""
    if user_frame(exc) is None and user_frame_in_text(exc) is not None:
        name, line = user_frame_in_text(exc)
        return f"{exc}\nerror: {type(exc).__name__} raised in your code at {relative(name)}:{line} (in a DataLoader worker); the traceback above shows where"
    summary = traceback.TracebackException.from_exception(exc)
    stack = list(summary.stack)
    first = next((i for i, frame in enumerate(stack) if is_user_file(frame.filename)), 0)
    summary.stack = traceback.StackSummary.from_list(stack[first:])
    text = "".join(summary.format(chain=False))
    frame = user_frame(exc)
    where = f"{relative(frame.filename)}:{frame.lineno} in {frame.name}" if frame else "your code"
    hint = f"error: {type(exc).__name__} raised in your code at {where}; the traceback above shows where (frames of the template trimmed)"
    return f"{text}{hint}"
