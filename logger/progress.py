"""tqdm bars on a terminal, nothing otherwise.

Bars go to stderr and only when stderr is a terminal, on rank 0, and ``trainer.progress_bar``
is true; otherwise the Trainer logs a plain line every ``log_step`` steps instead, which reads
well in a file, a CI log or a cluster's job output.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def progress_enabled(wanted: bool, rank: int) -> bool:
    return wanted and rank == 0 and sys.stderr.isatty()


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    """A bar updated by hand (the training epoch: batches, batch/s, and a loss postfix)."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False, unit="batch")


def progress_iter(batches: Iterable, desc: str, enabled: bool, total: int | None = None) -> Iterable:
    """``batches`` under a bar (the validation epoch: batches and batch/s); ``batches`` itself when disabled."""
    if not enabled:
        return batches
    if total is None:
        total = len(batches) if hasattr(batches, "__len__") else None
    return tqdm(batches, total=total, desc=desc, dynamic_ncols=True, leave=False, unit="batch")
