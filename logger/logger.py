"""Python logging for a run: console always, ``train.log`` in the run directory on rank 0.

Verbosity 0/1/2 maps to WARNING/INFO/DEBUG. Non-zero ranks log warnings only, so a DDP run's
console reads like a single-process one.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOGGER_NAME = "template"
LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(verbosity: int = 1, rank: int = 0) -> logging.Logger:
    """Console logging to stdout; call once per process before anything logs."""
    logger = get_logger()
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(LEVELS.get(verbosity, logging.INFO) if rank == 0 else logging.WARNING)
    handler = logging.StreamHandler(sys.stdout)
    prefix = "" if rank == 0 else f"[rank {rank}] "
    handler.setFormatter(logging.Formatter(prefix + _FORMAT, "%H:%M:%S"))
    logger.addHandler(handler)
    return logger


def add_log_file(path: Path) -> None:
    """Also write everything to ``path`` (appending, so a resumed run continues its log)."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%d %H:%M:%S"))
    get_logger().addHandler(handler)


def close_log_files() -> None:
    logger = get_logger()
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            logger.removeHandler(handler)
