"""The sweep's study client: the study, its storage and folder, and what they are told.

It opens (or creates) the study under the setup lock, with the folder and ``sweep.json``; records a
trial's end (COMPLETE with its objective, PRUNED, FAIL with the reason, or WAITING again);
rewrites the folder's results; and holds the sweep's parent run in the experiment trackers. Only
rank 0 has one that is open (``app/sweeps/worker.py``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

from app.config import Config
from app.cv import summary_of
from app.run_records import best_row, read_run
from app.sweeps import results
from app.sweeps.jobs import Job, SweepRequest
from app.sweeps.locks import SetupLock
from app.sweeps.space import Space
from app.sweeps.storage import default_storage, masked, open_storage
from app.sweeps.study import ensure_slots, open_study, retry_stale_trial
from logger.logger import get_logger
from logger.trackers import close_parent, open_parent
from utils.errors import UserError, first_line
from utils.files import file_error, read_json, write_atomic

SWEEP_FILE = "sweep.json"


class StudyClient:
    """The study of one sweep as this worker sees it: ``base`` and ``space`` say what the sweep is,
    ``folder`` is where it lives, ``study`` and ``storage`` are Optuna's (None until :meth:`open`)."""

    def __init__(self, request: SweepRequest, base: Config, raw: dict, space: Space):
        self.request, self.base, self.raw, self.space = request, base, raw, space
        self.name = request.study or Path(request.space).stem
        if not self.name or "/" in self.name or self.name.startswith(".") or len(self.name) > 100:
            raise UserError(f"--study: {self.name!r} cannot name a folder; use letters, digits, - and _")
        self.folder = Path(base.settings.save_dir).expanduser() / base["name"] / "sweeps" / self.name
        mode, self.metric = base.monitor()
        self.direction = "maximize" if mode == "max" else "minimize"
        self.url = request.storage or default_storage(self.folder)
        self.study: Any = None
        self.storage: Any = None
        self.tracker_parent: dict | None = None
        """The sweep's parent run in the experiment trackers (rank 0): every trial is its child."""

    def identity(self) -> dict:
        """What the stored study must match (``app/sweeps/study.py``)."""
        config = self.base.to_dict()
        config["trainer"].pop("save_dir", None)  # where this worker's trials go is its own (machines may share no disk)
        return {"space": self.space.identity(), "config": config, "folds": self.request.folds}

    # -- opening ------------------------------------------------------------------------------------

    def open(self, identity: dict) -> None:
        new_parents = [path for path in self.folder.parents if not path.exists()]  # deepest first
        try:
            self._make_folder(self.folder.parent)
            with SetupLock(self.folder.parent / f".{self.name}.lock"):
                self._set_up(identity)
        except BaseException:
            for path in new_parents:  # a new sweep that could not start leaves nothing
                with contextlib.suppress(OSError):
                    path.rmdir()  # only if empty: another sweep may have come meanwhile
            raise
        # Workers that share no disk find one parent by the study's name and storage.
        key = None if self.request.storage is None else f"sweep {self.name} @ {masked(self.url)}"
        self.tracker_parent = open_parent("sweep", self.folder, self.base.to_dict(), key=key)

    def _set_up(self, identity: dict) -> None:
        """Under the setup lock: open or create the study and the folder, and describe the sweep."""
        made = not self.folder.exists()
        try:
            if self.request.storage is None:
                self._make_folder(self.folder)
            self.storage = open_storage(self.url, self.space.heartbeat, retry_stale_trial)
            self.study = open_study(self.storage, self.name, identity, self.direction)
            if self.request.storage is not None:
                self._make_folder(self.folder)
            ensure_slots(self.study, self.space)
        except BaseException:
            if made and self.folder.exists() and self.study is None:
                shutil.rmtree(self.folder, ignore_errors=True)
            raise
        if not (self.folder / SWEEP_FILE).exists():
            description = {
                "study": self.name,
                "storage": masked(self.url),
                "config": str(Path(self.request.config).resolve()),
                "space": str(Path(self.request.space).resolve()),
                "overrides": self.request.overrides,
                "folds": self.request.folds,
                "monitor": self.base.settings.monitor,
                "command": self.request.hint,
            }
            write_atomic(self.folder / SWEEP_FILE, json.dumps(description, indent=2) + "\n", "sweep folder", "make it writable")

    def _make_folder(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise file_error("trainer.save_dir", folder, exc, "choose a writable trainer.save_dir") from None

    # -- what the study is told -----------------------------------------------------------------------

    def record_end(self, job: Job, folder: Path, ended_by: str | None) -> tuple[float | None, int]:
        """Tell the study how the trained trial ended; (its objective, its epochs)."""
        from optuna.trial import TrialState

        value, epochs = self._objective(folder)
        pruned = ended_by is not None and ended_by.startswith("pruned") or self._was_pruned(folder)
        try:
            self.storage.set_trial_user_attr(job.trial_id, "epochs", epochs)
            if pruned:
                self.study.tell(job.number, state=TrialState.PRUNED)
            elif value is None:
                self.storage.set_trial_user_attr(job.trial_id, "failure", f"no finite {self.metric} in any epoch")
                self.study.tell(job.number, state=TrialState.FAIL)
            else:
                self.study.tell(job.number, value)
        except (RuntimeError, ValueError) as exc:  # failed meanwhile by another worker's stale-trial check: its retry finds the folder finished
            get_logger().warning("sweep: trial %d could not be told (%s); its slot's retry will read the finished run", job.slot, first_line(exc))
        return value, epochs

    def say_end(self, job: Job, folder: Path, value: float | None, epochs: int) -> None:
        """After :meth:`record_end`: the trial's TensorBoard record, the folder's results, the log line."""
        state = self.storage.get_trial(job.trial_id).state.name
        results.write_hparams(folder, job.values, self.metric, value, self.base.settings.tensorboard)
        self.write_results()
        get_logger().info("trial %d: %s, %s %s after %d epochs", job.slot, state.lower(), self.metric,
                          "-" if value is None else f"{value:.6g}", epochs)  # fmt: skip

    def record_failure(self, job: Job, reason: str) -> None:
        from optuna.trial import TrialState

        try:
            self.storage.set_trial_user_attr(job.trial_id, "failure", reason)
            self.study.tell(job.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError) as exc:  # finished meanwhile (another worker's stale-trial check failed it)
            get_logger().warning("sweep: trial %d could not be told it failed (%s)", job.slot, first_line(exc))

    def record_waiting(self, job: Job) -> None:
        """The trial waits again (at its checkpoint, if it has one) for this or another worker."""
        from optuna.trial import TrialState

        try:
            self.storage.set_trial_system_attr(job.trial_id, "worker", None)  # unsigned: whoever takes it next signs it
            self.storage.set_trial_state_values(job.trial_id, state=TrialState.WAITING)
        except Exception as exc:
            get_logger().warning("sweep: trial %d could not be put back to waiting (%s)", job.slot, first_line(exc))

    def _objective(self, folder: Path) -> tuple[float | None, int]:
        """(the best monitored value, or the mean over folds; epochs trained)."""
        if self.request.folds is not None:
            summary = summary_of(folder, "the trial's folder is damaged")
            across = summary.get("across", {}).get(self.metric)
            return (across["mean"] if across else None), len(summary.get("per_fold", []))  # folds, for a CV
        record = read_run(folder)
        best = best_row(record.rows, f"{'max' if self.direction == 'maximize' else 'min'} {self.metric}")
        value = best.get(self.metric) if best else None
        finite = isinstance(value, (int, float)) and value == value and abs(value) != float("inf")
        return (float(value) if finite else None), len(record.rows)

    def _was_pruned(self, folder: Path) -> bool:
        """A trial found finished (its worker died before telling): whether the pruner had ended it."""
        if self.request.folds is not None:
            return False
        try:
            return str(read_run(folder).ended.get("reason", "")).startswith("pruned")
        except UserError:
            return False

    # -- the folder and the tracker parent ------------------------------------------------------------

    def write_results(self) -> str:
        return results.write(self.study, self.folder, self.space, self.metric, self.direction)

    def unfinished(self) -> list:
        return [t for t in self.study.get_trials(deepcopy=False) if t.state.name in ("WAITING", "RUNNING")]

    def close_parent(self, state: str) -> None:
        states = [t.state.name for t in self.study.get_trials(deepcopy=False)]
        metrics = {f"trials_{name.lower()}": states.count(name) for name in ("COMPLETE", "PRUNED", "FAIL")}
        if metrics["trials_complete"]:
            metrics[f"best_{self.metric}"] = self.study.best_value
        files = [self.folder / name for name in (SWEEP_FILE, "results.csv", "best.json") if (self.folder / name).exists()]
        close_parent(self.tracker_parent, state, metrics, files)


def read_description(folder: Path) -> dict:
    return read_json(folder / SWEEP_FILE, "sweep description", "pass a sweep folder: <save_dir>/<name>/sweeps/<study>")
