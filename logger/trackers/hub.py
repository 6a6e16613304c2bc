"""A run's experiment trackers: what the run sends them, and where their ids are kept.

:class:`Trackers` is held by the run's ``RunRecorder`` (rank 0 only; other ranks and runs that name
no tracker get :meth:`Trackers.off`, whose methods do nothing). The training loop calls
:meth:`Trackers.log_epoch` (after the epoch's checkpoint is written, so a tracker never holds an
epoch that a resume would train again) and :meth:`Trackers.log_step`; both only queue. Each
tracker has its own thread (``worker.py``), so a slow or hung one delays neither training nor the
others. The session ends them with :meth:`Trackers.end` (how the run ended), waiting at most
``logger.finish_timeout`` seconds for all of them together.

The tracker runs' ids (and what each holds: its last epoch and step) are kept in the run
directory's ``trackers.json``, rewritten after each send, and the ids in every checkpoint, so a
resume continues the same tracker runs (from ``trackers.json``, else from the checkpoint) and a
fine-tune can name the run it started from.
"""

from __future__ import annotations

import atexit
import json
import threading
import time
from pathlib import Path

from logger.logger import get_logger
from logger.trackers.settings import TrackerSettings
from logger.trackers.tracker import TrackedRun, Tracker, describe
from logger.trackers.worker import Worker
from utils.checkpoints import find_checkpoint
from utils.files import write_atomic

RECORD = "trackers.json"


def read_record(folder: Path) -> tuple[dict, str | None]:
    """``folder/trackers.json`` as ``{tracker: entry}`` (empty when there is none), and what was wrong with it."""
    path = folder / RECORD
    if not path.exists():
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {}, describe(exc)
    if not isinstance(data, dict) or not all(isinstance(value, dict) for value in data.values()):
        return {}, "not a mapping of trackers to mappings"
    if not all(marks_valid(entry) for entry in data.values()):
        return {}, "an epoch or step mark is not a whole number"
    return data, None


def marks_valid(entry: dict) -> bool:
    """Whether an entry's marks (the last epoch and step its tracker run holds), where given, are whole numbers."""
    return all(isinstance(entry.get(key, 0), int) and not isinstance(entry.get(key, 0), bool) and entry.get(key, 0) >= 0 for key in ("epoch", "step"))


def make_tracker(name: str, settings: TrackerSettings, run: TrackedRun, stored: dict | None) -> Tracker:
    if name == "mlflow":
        from logger.trackers.mlflow_tracker import MlflowTracker

        return MlflowTracker(settings, run, stored)
    from logger.trackers.wandb_tracker import WandbTracker

    return WandbTracker(settings, run, stored)


class Trackers:
    """The experiment trackers of one run (MLflow, W&B): each on a background thread, so a tracker that fails
    or hangs never stops training; their ids survive resumes."""

    def __init__(self, settings: TrackerSettings | None = None, run: TrackedRun | None = None, checkpoint_ids: dict | None = None, rows: list[dict] = ()):
        """``checkpoint_ids``: the ids kept in the checkpoint a resume starts from (used when
        ``trackers.json`` is missing or damaged); ``rows``: ``metrics.jsonl``'s rows up to that
        checkpoint, sent to a tracker that does not hold them yet (one added on resume, or one that
        lost what was queued when the process was killed)."""
        self.settings = settings
        self.run = run
        self.workers: dict[str, Worker] = {}
        self.started = False
        self.ended = False
        self.lock = threading.Lock()
        self.write_failed = False
        self.stored: dict = {}
        self.rows = list(rows)
        if settings is None or run is None or not settings.names:
            return
        if run.mode == "resume":
            self.stored, problem = read_record(run.run_dir)
            if problem is not None:
                get_logger().warning("%s: unreadable (%s); the trackers continue the runs named in the checkpoint", run.run_dir / RECORD, problem)
            if not self.stored and isinstance(checkpoint_ids, dict):
                self.stored = {name: dict(ids) for name, ids in checkpoint_ids.items() if isinstance(ids, dict) and marks_valid(ids)}
        self.trackers = {name: make_tracker(name, settings, run, self.stored.get(name)) for name in settings.names}

    @classmethod
    def off(cls) -> Trackers:
        return cls()

    @property
    def active(self) -> bool:
        return bool(self.settings and self.settings.names and self.run)

    def start(self) -> None:
        """Start the threads (once training starts: a run that fails before then leaves no tracker run)."""
        if not self.active or self.started:
            return
        self.started = True
        for name, tracker in self.trackers.items():
            self.workers[name] = worker = Worker(tracker, self.save)
            worker.start()
            for row in self.rows:
                worker.put(("epoch", row, time.time()))
        atexit.register(self.end, "unknown")

    def log_epoch(self, row: dict) -> None:
        for worker in self.workers.values():
            worker.put(("epoch", dict(row), time.time()))

    def log_step(self, values: dict, step: int) -> None:
        for worker in self.workers.values():
            worker.put(("step", dict(values), step, time.time()))

    def records(self) -> dict:
        """What finds each tracker run again and what it holds (ids and marks, plain data): for a
        checkpoint and ``trackers.json``. A tracker not (yet) open this session keeps what was stored:
        a resume whose server is down for a while must not forget the run it continues."""
        if not self.active:
            return {}
        current = {name: tracker.record() or self.stored.get(name) for name, tracker in self.trackers.items()}
        return {name: entry for name, entry in current.items() if entry}

    def save(self) -> None:
        """Rewrite ``trackers.json`` (from a worker thread; a failure is one warning, the trackers go on)."""
        with self.lock:
            others = {name: entry for name, entry in self.stored.items() if name not in self.trackers}  # a tracker this session does not use
            record = {**others, **self.records()}
            if record == others or record == self.stored:
                return
            try:
                write_atomic(self.run.run_dir / RECORD, json.dumps(record, indent=2) + "\n", "run directory", "make it writable")
                self.stored = record
            except Exception as exc:  # noqa: BLE001 - the record is a convenience; the checkpoint has the ids too
                if not self.write_failed:
                    get_logger().warning("could not write %s (%s); the checkpoints keep the tracker ids", self.run.run_dir / RECORD, describe(exc))
                self.write_failed = True

    def end(self, state: str) -> None:
        """This session's end (``finished``, ``stopped``, ``failed``; ``discarded`` when the run directory
        goes): files and status sent, waiting at most ``logger.finish_timeout`` seconds; safe to call twice."""
        if not self.started or self.ended:
            return
        self.ended = True
        atexit.unregister(self.end)
        try:
            files, best = self.artifacts()
            for worker in self.workers.values():
                worker.end(state, files, best)
            deadline = time.monotonic() + self.settings.finish_timeout
            for name, worker in self.workers.items():
                if not worker.wait(deadline):
                    get_logger().warning(
                        "%s tracker: still busy after logger.finish_timeout=%gs; the run ends without it (its tracker run may stay unfinished)",
                        name,
                        self.settings.finish_timeout,
                    )
        except KeyboardInterrupt:  # a second Ctrl-C while the trackers finish: the run ends as it was going to
            get_logger().warning("trackers: interrupted while they finished; the run ends without waiting for them")
        except Exception as exc:  # noqa: BLE001 - the run's own end never depends on its trackers
            get_logger().warning("trackers: could not finish (%s); the run directory has everything", describe(exc))

    def artifacts(self) -> tuple[list[Path], Path | None]:
        """The run's files a tracker keeps (config, manifest, metrics) and its best checkpoint (else its last)."""
        folder = self.run.run_dir
        names = ["config.json", *sorted(p.name for p in folder.glob("config-resume-*.json")), "manifest.json", "metrics.jsonl"]
        files = [folder / name for name in names if (folder / name).is_file()]
        checkpoints = folder / "checkpoints"
        best = next((path for name in ("best", "last") if (path := find_checkpoint(checkpoints, name)) is not None), None)
        return files, best
