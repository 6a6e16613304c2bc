"""tqdm bars on a terminal, nothing otherwise (the Trainer then logs plain lines every log_step)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_enabled(wanted: bool, rank: int) -> bool:
    return wanted and rank == 0 and sys.stderr.isatty()


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False, unit="batch")
