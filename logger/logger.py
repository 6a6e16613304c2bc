"""Python logging for a run: the console always, ``train.log`` in the run directory on rank 0.

``trainer.verbosity`` 0/1/2 sets the console to WARNING/INFO/DEBUG; ``train.log`` always gets
INFO (and DEBUG at verbosity 2), so a quiet console still leaves a complete record. Non-zero
ranks log warnings only, so a DDP run's console reads like a single-process one. Console lines
go through ``tqdm.write`` so that they never tear a progress bar apart.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

from utils.files import open_own

LOGGER_NAME = "template"
LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _ConsoleHandler(logging.StreamHandler):
    """A stream handler that clears and redraws tqdm bars around each line it writes."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's contract: a failing handler reports and carries on
            self.handleError(record)


class _RunFileHandler(logging.FileHandler):
    """``train.log``, opened without following a link (``utils.files.open_own``): a link planted
    there would make the run append to whatever it points at."""

    def _open(self):
        fd = open_own(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(verbosity: int = 1, rank: int = 0) -> logging.Logger:
    """Console logging to stdout; call once per process before anything logs."""
    logger = get_logger()
    close_log_files()
    logger.handlers.clear()
    logger.propagate = False
    console_level = LEVELS.get(verbosity, logging.INFO) if rank == 0 else logging.WARNING
    logger.setLevel(min(console_level, logging.INFO) if rank == 0 else logging.WARNING)
    handler = _ConsoleHandler(sys.stdout)
    handler.setLevel(console_level)
    prefix = "" if rank == 0 else f"[rank {rank}] "
    handler.setFormatter(logging.Formatter(prefix + _FORMAT, "%H:%M:%S"))
    logger.addHandler(handler)
    return logger


def add_log_file(path: Path) -> None:
    """Also write everything to ``path`` (appending, so a resumed run continues its log).

    It replaces the ``train.log`` of any earlier run in this process (a sweep, a notebook, the
    benchmark), so that one run's lines never land in another's log.
    """
    close_log_files()
    handler = _RunFileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%d %H:%M:%S"))
    get_logger().addHandler(handler)


def log_to_files(level: int, message: str) -> None:
    """Write ``message`` to ``train.log`` only (the console already showed it)."""
    record = get_logger().makeRecord(LOGGER_NAME, level, __file__, 0, message, None, None)
    for handler in get_logger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def close_log_files() -> None:
    """Flush and detach every ``train.log`` handler (the console stays)."""
    logger = get_logger()
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            logger.removeHandler(handler)
