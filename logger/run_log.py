"""Everything a run writes besides checkpoints: ``config.json``, ``train.log``, ``metrics.jsonl``
and TensorBoard events, all in the run directory and all on rank 0 only.

Other ranks get a ``RunLog(None, ...)`` whose methods do nothing, so callers never test ranks.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from logger.logger import add_log_file, close_log_files, get_logger
from logger.metrics_file import MetricsFile
from logger.tensorboard import TensorboardWriter


class RunLog:
    def __init__(self, run_dir: Path | None, config: dict, resume_epoch: int | None = None, resume_step: int | None = None):
        """Create (or, resuming, reopen) the run directory; ``resume_epoch``/``resume_step`` say
        where the checkpoint left off, so rows and events written after it are dropped."""
        self.run_dir = run_dir
        self.metrics: MetricsFile | None = None
        self.tensorboard = TensorboardWriter(None, False)
        self.created = False
        if run_dir is None:
            return
        self.created = not run_dir.exists()
        # Folders this run creates, outermost first, so that discard() can take back exactly those.
        self.new_folders = [folder for folder in reversed([run_dir, *run_dir.parents]) if not folder.exists()]
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        add_log_file(run_dir / "train.log")
        self.metrics = MetricsFile(run_dir / "metrics.jsonl", resume_after_epoch=resume_epoch)
        purge = resume_step + 1 if resume_step is not None else None
        self.tensorboard = TensorboardWriter(run_dir, config["trainer"]["tensorboard"], purge_step=purge)

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def log_epoch(self, row: dict, step: int) -> None:
        """One finished epoch: a ``metrics.jsonl`` row, TensorBoard scalars, one console line."""
        get_logger().info("epoch %d  %s", row["epoch"], "  ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k != "epoch"))
        if self.metrics is not None:
            self.metrics.append(row)
        scalars = {"epoch": row["epoch"]}
        for key, value in row.items():
            if key == "epoch" or not isinstance(value, (int, float)):
                continue
            scalars[f"valid/{key[4:]}" if key.startswith("val_") else f"train/{key}"] = value
        self.tensorboard.add_scalars(scalars, step)
        self.tensorboard.flush()

    def close(self) -> None:
        """Close the event file and flush ``train.log``; safe to call twice.

        ``train.log`` stays attached so that what the entry script logs after training (the
        summary, or how to resume a stopped run) is in it too; ``logging`` closes it at exit,
        and the next ``setup_logging`` in the same process does too.
        """
        self.tensorboard.close()
        for handler in get_logger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.flush()

    def discard(self) -> None:
        """Close, and delete the run directory if this RunLog created it: for a new run that
        failed before its first epoch, so a user error leaves nothing behind."""
        self.close()
        close_log_files()
        if self.created and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            for folder in reversed(self.new_folders[:-1]):  # e.g. saved/<name>/, if this run made it and it is empty
                if folder.exists() and not any(folder.iterdir()):
                    folder.rmdir()
            self.created = False


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
