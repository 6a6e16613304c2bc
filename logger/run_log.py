"""Everything a run writes besides checkpoints: ``config.json``, ``train.log``, ``metrics.jsonl``
and TensorBoard events, in a run directory that ``app/run_dir.py`` has claimed, on rank 0 only;
and what it sends to experiment trackers (MLflow, W&B: ``logger/trackers/``).

Other ranks (and a Trainer without a run directory) get :meth:`RunRecorder.off`, whose methods do
nothing, so callers never test ranks. A resumed run appends: ``config.json`` is never replaced
(a resume whose config differs writes ``config-resume-<N>.json`` beside it), rows of
``metrics.jsonl`` after the checkpoint move to ``metrics.superseded.jsonl``, and TensorBoard
events after the checkpoint's step are purged.

Trackers start when training does (:meth:`RunRecorder.begin`), get each epoch's row once its
checkpoint is written (:meth:`RunRecorder.epoch_saved`, a ``trainer.epoch_end`` hook) and the step
scalars (:meth:`RunRecorder.log_scalars`), and are ended by the session with how the run ended
(:meth:`RunRecorder.end`). Nothing they do can fail the run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from logger.logger import add_log_file, get_logger
from logger.metrics_file import MetricsFile
from logger.tensorboard import TensorboardWriter
from logger.trackers import Trackers
from utils.files import refuse_link, write_atomic


class RunRecorder:
    """Where a run's records go: ``train.log``, ``metrics.jsonl``, TensorBoard and the experiment trackers, for
    a run directory (or nowhere, ``run_dir=None``, for a pre-flight or a test)."""

    def __init__(self, run_dir: Path | None, tensorboard: bool = False, purge_step: int | None = None, trackers: Trackers | None = None):
        self.run_dir = run_dir
        self.claim: Any = None  # the run directory's lock (app/run_dir.py), given up by close()
        self.metrics: MetricsFile | None = None
        self.tensorboard = TensorboardWriter(None, False)
        self.trackers = trackers or Trackers.off()
        if run_dir is None:
            return
        refuse_link(run_dir / "checkpoints")  # a link there would take the checkpoints out of the run directory
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        add_log_file(run_dir / "train.log")
        self.metrics = MetricsFile(run_dir / "metrics.jsonl")
        self.tensorboard = TensorboardWriter(run_dir, tensorboard, purge_step=purge_step)

    @classmethod
    def off(cls) -> RunRecorder:
        return cls(None)

    @classmethod
    def start(cls, run_dir: Path, config: dict, tensorboard: bool, trackers: Trackers | None = None) -> RunRecorder:
        """A new run in its new directory: the resolved config, then the log files."""
        write_atomic(run_dir / "config.json", json.dumps(config, indent=2) + "\n", "run directory", "make it writable")
        return cls(run_dir, tensorboard, trackers=trackers)

    @classmethod
    def resume(
        cls,
        run_dir: Path,
        config: dict,
        saved_config: dict | None,
        completed_epochs: int,
        global_step: int,
        tensorboard: bool,
        trackers: Trackers | None = None,
    ) -> RunRecorder:
        """Continue the run in ``run_dir`` after a checkpoint of ``completed_epochs`` epochs and ``global_step``
        steps; ``saved_config`` is its ``config.json``, read beforehand (``app/history.py``)."""
        saved = run_dir / "config.json"
        if saved_config != config:
            if saved_config is not None:
                number = 1 + len(list(run_dir.glob("config-resume-*.json")))
                saved = run_dir / f"config-resume-{number}.json"
            write_atomic(saved, json.dumps(config, indent=2) + "\n", "run directory", "make it writable")
            get_logger().info("the resumed config differs from the run's config.json: saved as %s", saved.name)
        MetricsFile.keep_epochs(run_dir / "metrics.jsonl", completed_epochs, run_dir / "metrics.superseded.jsonl")
        return cls(run_dir, tensorboard, purge_step=global_step + 1, trackers=trackers)

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def log_epoch(self, row: dict, step: int) -> None:
        """One finished epoch: a ``metrics.jsonl`` row, TensorBoard scalars, one console line."""
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k != "epoch" and not isinstance(v, list))
        get_logger().info("epoch %d  %s", row["epoch"], shown)
        if self.metrics is not None:
            self.metrics.append(row)
        scalars = {"epoch": row["epoch"]}
        for key, value in row.items():
            tag = f"valid/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            if isinstance(value, list):
                self.tensorboard.add_matrix(tag, value, step)
            elif key != "epoch" and isinstance(value, (int, float)):
                scalars[tag] = value
        self.tensorboard.add_scalars(scalars, step)
        self.tensorboard.flush()

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars of one optimizer step (``train/step_loss``, ...): TensorBoard and the trackers."""
        self.tensorboard.add_scalars(values, step)
        self.trackers.log_step(values, step)

    def begin(self) -> None:
        """Training starts: the trackers open their runs (in the background)."""
        self.trackers.start()

    def epoch_saved(self, row: dict) -> None:
        """An epoch's row, once its checkpoint is written, to the trackers (a ``trainer.epoch_end`` hook:
        a tracker never holds an epoch that a resume trains again)."""
        self.trackers.log_epoch(row)

    def checkpoint_meta(self) -> dict:
        """What a checkpoint keeps of this log: the tracker runs' ids and marks (plain data), when there are any."""
        records = self.trackers.records()
        return {"trackers": records} if records else {}

    def end(self, state: str) -> None:
        """How this session ended (``finished``, ``stopped``, ``failed``; ``discarded`` when the run
        directory goes): the trackers send what is left and finish, in a bounded time."""
        self.trackers.end(state)

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
        if self.claim is not None:
            self.claim.release()


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
