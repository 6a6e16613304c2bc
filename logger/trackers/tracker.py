"""What every tracker adapter is: a run in the tracker's store, what it already holds, and how to send more.

An adapter (``mlflow_tracker.py``, ``wandb_tracker.py``) is used by one background thread
(``worker.py``) and may raise anything: the worker turns that into a warning and tries again at
the next epoch. Exactly once: the adapter knows the last epoch and the last step its run holds
(from its store when it can tell, else from ``trackers.json``), and :meth:`Tracker.log` sends
only what comes after them, so a resumed run that trains epochs again (after a checkpoint
older than what was sent) or catches up from ``metrics.jsonl`` never sends one twice.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from logger.logger import get_logger
from logger.manifest import read_manifest
from logger.trackers.settings import TrackerSettings

STEP_KEYS = ("train/step_loss", "train/step_samples_per_sec")
"""The scalars logged every ``trainer.log_step`` optimizer steps, at their step (TensorBoard's tags)."""
STATES = ("finished", "stopped", "failed", "unknown")
"""How a run's session ended (``logger/manifest.py``'s states; ``unknown``: nobody said, the process is exiting)."""


@dataclass
class TrackedRun:
    """The run a tracker records: where it is, how it started, what it is linked to."""

    run_dir: Path
    config: dict
    mode: str = "new"
    """``new``, ``resume`` or ``finetune`` (``app/session.py``)."""
    parent: dict | None = None
    """A parent tracker run (a cross-validation, a sweep): what ``parents.open_parent`` returned."""
    finetuned_from: dict | None = None
    """A fine-tune's source: ``{"checkpoint": path, "trackers": ids kept in that checkpoint}``."""
    completed_epochs: int = 0
    """The epochs done when this session starts (a resume's checkpoint)."""
    extra_tags: dict = field(default_factory=dict)

    def manifest(self) -> dict:
        """The run's ``manifest.json`` (command, git commit), or nothing if it cannot be read."""
        return read_manifest(self.run_dir) or {}

    def tags(self) -> dict[str, str]:
        """Key-value facts every tracker records: the run directory, how it was started, the code's commit."""
        manifest = self.manifest()
        git = manifest.get("git") if isinstance(manifest.get("git"), dict) else {}
        resumes = manifest.get("resumes") if isinstance(manifest.get("resumes"), list) else []
        latest = resumes[-1] if resumes and isinstance(resumes[-1], dict) else manifest
        tags = {"run_dir": str(self.run_dir), "mode": self.mode, "command": str(latest.get("command", ""))}
        if git.get("commit"):
            tags["git_commit"] = str(git["commit"]) + (" (dirty)" if git.get("dirty") else "")
        if resumes:
            tags["resumes"] = str(len(resumes))
        if self.finetuned_from:
            tags["finetuned_from_checkpoint"] = str(self.finetuned_from.get("checkpoint", ""))
        if self.parent:
            tags["parent_folder"] = str(self.parent.get("folder", ""))
        return {**tags, **self.extra_tags}


def numbers(values: dict) -> dict[str, float]:
    """The numeric values of a row (a matrix, a string or a null is not a metric)."""
    return {key: float(value) for key, value in values.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


_UNSAFE = re.compile(r"[^\w.\- /:]")


def safe_key(key: str) -> str:
    """A metric or parameter name every tracker takes (MLflow refuses some characters)."""
    return _UNSAFE.sub("_", key).strip("/") or "_"


class Tracker(ABC):
    """One run in one tracker (see the module docstring). Called from its worker thread only."""

    name = ""

    def __init__(self, settings: TrackerSettings, run: TrackedRun, stored: dict | None = None):
        self.settings = settings
        self.run = run
        self.stored = dict(stored or {})
        self.epoch = 0
        """The last epoch the tracker's run holds."""
        self.step = 0
        """The last optimizer step of whose scalars it holds."""
        self.noted = False

    @property
    def is_open(self) -> bool:
        return bool(self.ids())

    @abstractmethod
    def ids(self) -> dict:
        """What finds this run again (kept in ``trackers.json`` and in every checkpoint); empty before it exists."""

    def record(self) -> dict:
        """``trackers.json``'s entry: the ids and the marks."""
        return {**self.ids(), "epoch": self.epoch, "step": self.step} if self.ids() else {}

    @abstractmethod
    def open(self) -> None:
        """Create the run, or find it again (a resume), and learn what it holds; idempotent."""

    @abstractmethod
    def send_epoch(self, row: dict, when: float) -> None:
        """One epoch row (``metrics.jsonl``'s), at its epoch."""

    @abstractmethod
    def send_steps(self, items: list[tuple[dict, int, float]]) -> None:
        """Step scalars: ``(values, step, time)`` in order."""

    @abstractmethod
    def finish(self, state: str, files: list[Path], best: Path | None) -> None:
        """The end of this session: files as artifacts, the best checkpoint's path (its file with
        ``log_checkpoints``), the run's status."""

    @abstractmethod
    def discard(self) -> None:
        """The run directory is removed (stopped before its first step): the tracker's run goes too."""

    def log(self, pending: list[tuple]) -> None:
        """Send what ``pending`` holds beyond the marks, in order, removing each item once sent
        (what is left after an error is sent at the next try)."""
        self.open()
        if not self.noted and self.run.mode == "resume" and self.epoch > self.run.completed_epochs:
            get_logger().info(
                "%s tracker: its run holds epochs up to %d and this resume starts after epoch %d: epochs %d-%d keep the values first sent "
                "(metrics.superseded.jsonl has them too)",
                self.name,
                self.epoch,
                self.run.completed_epochs,
                self.run.completed_epochs + 1,
                self.epoch,
            )
        self.noted = True
        while pending:
            kind = pending[0][0]
            if kind == "epoch":
                _, row, when = pending[0]
                if row["epoch"] > self.epoch:
                    self.send_epoch(row, when)
                    self.epoch = row["epoch"]
                pending.pop(0)
                continue
            count = 1
            while count < len(pending) and pending[count][0] == "step":
                count += 1
            items = [(values, step, when) for _, values, step, when in pending[:count] if step > self.step]
            if items:
                self.send_steps(items)
                self.step = max(step for _, step, _ in items)
            del pending[:count]

    def parent_entry(self) -> dict:
        """This tracker's part of the run's parent (``parents.open_parent``), or nothing."""
        return dict((self.run.parent or {}).get(self.name) or {})

    def source_entry(self) -> dict:
        """This tracker's ids of a fine-tune's source run, or nothing."""
        trackers = (self.run.finetuned_from or {}).get("trackers")
        return dict(trackers.get(self.name) or {}) if isinstance(trackers, dict) and isinstance(trackers.get(self.name), dict) else {}


def describe(exc: BaseException) -> str:
    """An exception as one short line for a warning."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else f"{text[:110]} ... {text[-85:]}"  # the end often holds the cause (a refused connection)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
