"""One sweep worker: take a trial slot, train it as an ordinary run directory, tell the study, repeat.

``python sweep.py -c CONFIG --space SPACE`` is one worker (under torchrun, every process of it:
rank 0 talks to the study and every rank trains the trial with the values it broadcasts). Any
number of workers may run the same command at once, on one machine or on many with one
``--storage``; each trial slot is trained once (``app/sweeps/study.py``).

A trial is ``<sweep>/trial-NNNN/``, made by the same lifecycle as ``train.py`` (``app/session.py``),
its config the base config with the trial's values set as overrides; with ``--folds K`` it is a
cross-validation run directory (``app/cv.py``) whose objective is the mean over its folds.

**What a worker does with what it finds.** Slots are taken lowest first. A RUNNING trial of this
machine and this sweep folder whose worker is gone (the slot's lock, ``.slot-NNNN.lock``, is free)
is taken over at once: its run directory is resumed from its ``last`` checkpoint exactly as
``train.py -r`` would (or, if it finished before its worker could say so, only told). A WAITING
slot whose folder holds a checkpoint (a trial a signal stopped, or one re-enqueued after its
heartbeats stopped) is resumed the same way. A folder without a checkpoint holds nothing worth
keeping and is started again.

**Ends of a trial.** Trained to the end: COMPLETE, with the best value of ``trainer.monitor``
(the mean over folds for a CV). Stopped by the pruner (which gets the monitored value at every
epoch end, or the mean so far after every fold): PRUNED, with its checkpoint. Stopped by a signal:
WAITING again at its checkpoint, and the worker exits (128 + signal) printing the command that
continues. A user error (a non-finite loss, a batch size the data refuses: what the trial's values
cause) FAILs the trial, with the reason in its ``failure`` attribute, and the sweep goes on; after
three such failures in a row that are not a diverging loss, the worker stops with the last one.
A bug in your code (any other exception): the trial waits again and the worker stops with its
traceback, so a sweep never burns its trials on a bug; fix it and run the same command.
A database that stays away longer than ``storage.RETRY_SECONDS`` (``app/sweeps/storage.py``) is
neither: the worker stops in one line and the trial, at its checkpoint, is resumed by a re-run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Config, read_config_file
from app.cv import CrossValidation, fold_config, is_cv_dir, join_process_group, run_cross_validation, summary_of
from app.run_dir import lock_holder
from app.run_records import best_row, read_run, training_over
from app.session import RunRequest, Session
from app.sweeps import results
from app.sweeps.claims import FolderLock, Heartbeat, SetupLock, SlotLock
from app.sweeps.space import Space, read_space
from app.sweeps.storage import StorageAway, default_storage, masked, open_storage
from app.sweeps.study import ensure_slots, open_study, quiet_optuna, retry_stale_trial, slot_of
from logger.logger import get_logger, setup_logging
from logger.trackers import close_parent, open_parent
from utils import distributed
from utils.errors import NonFiniteLossError, UserError, first_line
from utils.files import file_error, read_json, write_atomic
from utils.signals import StopRequest

SWEEP_FILE = "sweep.json"
MAX_FAILURES_IN_A_ROW = 3
"""A worker whose trials fail this many times in a row with a user error (not a diverging loss) stops:
the cause is not the values (a full disk, a read-only folder, a broken data set)."""


@dataclass
class SweepRequest:
    config: str
    space: str
    study: str | None = None
    storage: str | None = None
    trials: int | None = None
    folds: int | None = None
    overrides: list[str] = field(default_factory=list)
    trust_checkpoint: bool = False
    devices: str | None = None
    command: str = ""
    """What ran (for the trials' manifests)."""
    hint: str = ""
    """The command that continues the sweep (or adds a worker), as printed."""


@dataclass
class Job:
    """A trial this worker took: its slot (the sweep's number), Optuna's trial, its values."""

    slot: int
    number: int
    trial_id: int
    values: dict
    how: str
    """``new``, ``resume`` (its folder's checkpoint), ``told`` (finished before its worker could say so)."""


class Sweep:
    def __init__(self, request: SweepRequest, stop: StopRequest):
        self.request = request
        self.stop = stop
        self.study: Any = None
        self.storage: Any = None
        self.slot_lock: SlotLock | None = None
        self.host = socket.gethostname()
        self.failures_in_a_row = 0
        self.tracker_parent: dict | None = None
        """The sweep's parent run in the experiment trackers (rank 0): every trial is its child."""

    # -- start ------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Check the config and the space (errors here create nothing), then open (or create) the study."""
        request = self.request
        quiet_optuna()  # the space's check tries its sampler and pruner on a study in memory
        base = Config.from_file(request.config, request.overrides)
        if not request.trust_checkpoint:
            base.check_checkpoints_resumable()
        self.base = base
        self.raw = read_config_file(request.config)
        self.space: Space = read_space(request.space, request.trials, base, request.config, request.overrides, request.trust_checkpoint)
        if request.folds is not None:
            if isinstance(request.folds, bool) or not isinstance(request.folds, int) or request.folds < 2:
                raise UserError(f"--folds: must be a whole number of at least 2, got {request.folds!r}")
            fold_config(base.to_dict(), request.folds, 0, request.config, True)
        self.name = request.study or Path(request.space).stem
        if not self.name or "/" in self.name or self.name.startswith(".") or len(self.name) > 100:
            raise UserError(f"--study: {self.name!r} cannot name a folder; use letters, digits, - and _")
        self.folder = Path(base.settings.save_dir).expanduser() / base["name"] / "sweeps" / self.name
        mode, self.metric = base.monitor()
        self.direction = "maximize" if mode == "max" else "minimize"
        self.url = request.storage or default_storage(self.folder)
        config = base.to_dict()
        config["trainer"].pop("save_dir", None)  # where this worker's trials go is its own (machines may share no disk)
        identity = {"space": self.space.identity(), "config": config, "folds": request.folds}
        join_process_group(base["device"], request.devices)
        setup_logging(base.settings.verbosity, int(os.environ.get("RANK", 0)))
        distributed.on_main(lambda: self._open(identity))  # rank 0 talks to the study; a refusal there stops every rank

    def _open(self, identity: dict) -> None:
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

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self) -> int:
        """Trials until none is left for this worker; 0, or the exit code of a trial a signal stopped."""
        logger = get_logger()
        if distributed.is_main_process():
            logger.info("sweep %s: %d trials, %s sampler, %s pruner, objective %s %s; storage %s; folder %s",
                        self.name, self.space.trials, self.space.sampler, self.space.pruner, self.direction, self.metric,
                        masked(self.url), self.folder)  # fmt: skip
            logger.info("continue or add workers with: %s", self.request.hint)
        code = 0
        import sqlalchemy.exc

        try:
            while code == 0:
                self.stop.mode = "raise"  # between trials a signal stops the worker at once
                job = distributed.on_main(self.next_job)
                if job is None:
                    break
                code = self.run_trial(job)
        except sqlalchemy.exc.SQLAlchemyError as exc:  # the database went away: the trials' folders are intact
            raise UserError(f"--storage: {masked(self.url)}: {first_line(exc)}; run the same command again to continue") from None
        if distributed.is_main_process():
            table = results.write(self.study, self.folder, self.space, self.metric, self.direction)
            waiting = [t for t in self.study.get_trials(deepcopy=False) if t.state.name in ("WAITING", "RUNNING")]
            if code == 0:
                logger.info("sweep %s: no trial left for this worker%s\n%s", self.name,
                            f" ({len(waiting)} waiting or running elsewhere)" if waiting else "", table)  # fmt: skip
            if code != 0 or not waiting:  # while other workers train, the parent stays open for them
                self._close_parent("stopped" if code else "finished")
        return code

    def _close_parent(self, state: str) -> None:
        states = [t.state.name for t in self.study.get_trials(deepcopy=False)]
        metrics = {f"trials_{name.lower()}": states.count(name) for name in ("COMPLETE", "PRUNED", "FAIL")}
        if metrics["trials_complete"]:
            metrics[f"best_{self.metric}"] = self.study.best_value
        files = [self.folder / name for name in (SWEEP_FILE, "results.csv", "best.json") if (self.folder / name).exists()]
        close_parent(self.tracker_parent, state, metrics, files)

    def next_job(self) -> Job | None:
        """Rank 0: take over a dead local worker's trial, else take the lowest waiting slot."""
        import optuna
        from optuna.trial import TrialState

        if self.space.heartbeat:
            try:
                optuna.storages.fail_stale_trials(self.study)
            except Exception as exc:
                get_logger().warning("sweep: could not check for stale trials (%s)", first_line(exc))
        with FolderLock(self.folder):
            trials = [t for t in self.study.get_trials(deepcopy=False) if (slot_of(t) is not None and slot_of(t) < self.space.trials)]
            for trial in sorted(trials, key=lambda t: slot_of(t)):
                if trial.state != TrialState.RUNNING or not self._mine(trial):
                    continue
                lock = SlotLock(self.folder, slot_of(trial))
                if not lock.acquire():
                    continue  # its worker is alive
                if self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                    lock.release()
                    continue
                return self._take_or_put_back(trial, lock, adopted=True)
            for trial in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: (slot_of(t), t.number)):
                lock = SlotLock(self.folder, slot_of(trial))
                if not lock.acquire():
                    continue
                try:
                    won = self.storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING)
                except optuna.exceptions.UpdateFinishedTrialError:
                    won = False
                if won:
                    return self._take_or_put_back(trial, lock, adopted=False)
                lock.release()
        return None

    def _mine(self, trial) -> bool:
        """Whether a RUNNING trial is this machine's and this folder's to take over when its slot lock
        is free. Without a worker attribute: a worker died between winning it and signing it, which
        on the default storage (every worker on this machine, each taking under the folder lock held
        here) is all it can mean."""
        worker = trial.system_attrs.get("worker")
        if worker is None:
            return self.request.storage is None
        return isinstance(worker, dict) and worker.get("host") == self.host and worker.get("folder") == str(self.folder.resolve())

    def _take_or_put_back(self, trial, lock: SlotLock, adopted: bool) -> Job:
        """:meth:`_take`; a signal or an error while taking puts the trial back to WAITING (never left RUNNING unsigned)."""
        from optuna.trial import TrialState

        try:
            return self._take(trial, lock, adopted)
        except BaseException:
            with contextlib.suppress(Exception):
                self.storage.set_trial_state_values(trial._trial_id, state=TrialState.WAITING)
            if self.slot_lock is None:
                lock.release()
            self._release()
            raise

    def _take(self, trial, lock: SlotLock, adopted: bool) -> Job:
        self.storage.set_trial_system_attr(trial._trial_id, "worker", {"host": self.host, "pid": os.getpid(), "folder": str(self.folder.resolve())})
        self.slot_lock = lock
        self.heartbeat = Heartbeat(self.storage, trial._trial_id, self.space.heartbeat).start()
        slot = slot_of(trial)
        self.trial = self._optuna_trial(trial._trial_id, slot)
        values = {param.key: self._suggest(param) for param in self.space.params}
        how = self._inspect(self.folder / f"trial-{slot:04d}")
        if adopted:
            get_logger().info("sweep: trial %d's worker is gone; this worker takes it over", slot)
        return Job(slot, trial.number, trial._trial_id, values, how)

    def _optuna_trial(self, trial_id: int, slot: int):
        import optuna

        self.study.sampler = self.space.make_sampler(slot)
        self.study.pruner = self.space.make_pruner(self.base.settings.epochs if self.request.folds is None else self.request.folds)
        return optuna.Trial(self.study, trial_id)

    def _suggest(self, param) -> Any:
        trial = self.trial
        if param.kind == "choices":
            return trial.suggest_categorical(param.key, list(param.choices))
        if param.kind == "int":
            return trial.suggest_int(param.key, param.low, param.high, step=param.step or 1, log=param.log)
        return trial.suggest_float(param.key, param.low, param.high, step=param.step, log=param.log)

    def _inspect(self, folder: Path) -> str:
        """What the slot's folder holds: ``new`` (nothing, or nothing worth keeping), ``resume``, ``told``."""
        if not folder.exists():
            return "new"
        if self.request.folds is not None:
            if not is_cv_dir(folder):
                return self._start_over(folder)
            summary = summary_of(folder, "remove it")
            return "told" if len(summary.get("per_fold", [])) >= self.request.folds else "resume"
        last = next((folder / "checkpoints" / name for name in ("last.pth", "last.dcp") if (folder / "checkpoints" / name).exists()), None)
        if last is None:
            return self._start_over(folder)
        try:
            finished = read_run(folder).state == "finished"
        except UserError:
            finished = False
        return "told" if finished or training_over(last) is not None else "resume"  # killed after its last checkpoint: done

    def _start_over(self, folder: Path) -> str:
        if lock_holder(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)
        return "new"

    # -- one trial ---------------------------------------------------------------------------------------

    def run_trial(self, job: Job) -> int:
        logger = get_logger()
        folder = self.folder / f"trial-{job.slot:04d}"
        shown = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in job.values.items())
        if distributed.is_main_process():
            logger.info("trial %d of %d (%s): %s", job.slot, self.space.trials, {"new": "starting", "resume": "resuming", "told": "finished"}[job.how], shown)
        ended_by = None
        try:
            if job.how == "told":
                code = 0
            elif self.request.folds is not None:
                code, ended_by = self._cross_validate(job, folder)
            else:
                code, ended_by = self._train(job, folder)
        except StorageAway:  # not the trial's values: the database stayed away; the trial is resumed by a re-run
            distributed.on_main(lambda: self._put_back(job))
            raise
        except UserError as exc:  # the trial's values (a diverging lr, a batch size the data refuses): this trial fails
            reason = str(exc)
            distributed.on_main(lambda: self._fail(job, reason))
            self.failures_in_a_row += 1
            if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW and not isinstance(exc, NonFiniteLossError):
                raise UserError(f"{MAX_FAILURES_IN_A_ROW} trials in a row failed; the last: {reason}") from None
            return 0
        except BaseException:
            distributed.on_main(lambda: self._put_back(job))
            raise
        if code != 0:
            distributed.on_main(lambda: self._put_back(job))
            if distributed.is_main_process():
                logger.warning("sweep stopped: trial %d waits at its checkpoint; continue with: %s", job.slot, self.request.hint)
            return code
        distributed.on_main(lambda: self._tell(job, folder, ended_by))
        self.failures_in_a_row = 0
        return 0

    def _train(self, job: Job, folder: Path) -> tuple[int, str | None]:
        common = {
            "trust_checkpoint": self.request.trust_checkpoint,
            "devices": self.request.devices,
            "command": self.request.command,
            "resume_hint": self.request.hint,
            "epoch_end": [self._pruning_hook()],
            "tracker_parent": self.tracker_parent,
        }
        if job.how == "resume":
            last = next(folder / "checkpoints" / name for name in ("last.pth", "last.dcp") if (folder / "checkpoints" / name).exists())
            distributed.on_main(lambda: self._report_history(folder))
            request = RunRequest(resume=str(last), **common)
        else:
            request = self._new_trial(job, folder, **common)
        session = Session(request, self.stop)
        code = session.run_or_abandon()
        return code, session.trainer.ended_by if session.trainer is not None else None

    def _cross_validate(self, job: Job, folder: Path) -> tuple[int, str | None]:
        if job.how == "resume":
            cv = CrossValidation.open(folder, self.request.trust_checkpoint, self.request.devices)
        else:
            request = self._new_trial(job, folder, trust_checkpoint=self.request.trust_checkpoint, devices=self.request.devices)
            cv = CrossValidation.start(request, self.request.folds, self.request.command)
        cv.hint = self.request.hint
        cv.tracker_parent = self.tracker_parent
        cv.after_fold = self._fold_hook()
        code = run_cross_validation(cv, self.stop, new=job.how == "new")
        return code, cv.ended_by

    def _new_trial(self, job: Job, folder: Path, **settings: Any) -> RunRequest:
        """A new run in ``folder``: the base config with the trial's values as overrides."""
        return RunRequest(
            config_data=self.raw,
            config_source=f"{self.request.config} (trial {job.slot})",
            overrides=[*self.request.overrides, *self.space.overrides(job.values)],
            run_dir=folder,
            **settings,
        )

    def _pruning_hook(self):
        """Every rank, after each epoch's checkpoint: rank 0 reports the monitored value and asks the pruner."""
        metric = self.metric

        def hook(row: dict) -> str | None:
            def decide() -> bool:
                value = row.get(metric)
                if not isinstance(value, (int, float)):
                    return False
                self.trial.report(float(value), row["epoch"])
                return self.trial.should_prune()

            prune = distributed.on_main(decide)
            return f"pruned by the {self.space.pruner} pruner" if prune else None

        return hook

    def _fold_hook(self):
        def hook(fold: int, summary: dict | None) -> str | None:
            def decide() -> bool:
                across = summary["across"].get(self.metric) if summary else None
                if across is None:
                    return False
                self.trial.report(float(across["mean"]), fold)
                return self.trial.should_prune()

            return f"pruned by the {self.space.pruner} pruner" if distributed.on_main(decide) else None

        return hook

    def _report_history(self, folder: Path) -> None:
        """A resumed trial's epochs so far, reported again: a trial re-enqueued after its heartbeats
        stopped starts with none, and the pruner compares epoch with epoch."""
        try:
            rows = read_run(folder).rows
        except UserError:
            return
        for row in rows:
            value = row.get(self.metric)
            if isinstance(value, (int, float)):
                self.trial.report(float(value), row["epoch"])

    # -- rank 0: what the study is told ------------------------------------------------------------------

    def _tell(self, job: Job, folder: Path, ended_by: str | None) -> None:
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
        self._release()
        state = self.storage.get_trial(job.trial_id).state.name
        results.write_hparams(folder, job.values, self.metric, value, self.base.settings.tensorboard)
        results.write(self.study, self.folder, self.space, self.metric, self.direction)
        get_logger().info("trial %d: %s, %s %s after %d epochs", job.slot, state.lower(), self.metric,
                          "-" if value is None else f"{value:.6g}", epochs)  # fmt: skip

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

    def _fail(self, job: Job, reason: str) -> None:
        from optuna.trial import TrialState

        try:
            self.storage.set_trial_user_attr(job.trial_id, "failure", reason)
            self.study.tell(job.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError) as exc:  # finished meanwhile (another worker's stale-trial check failed it)
            get_logger().warning("sweep: trial %d could not be told it failed (%s)", job.slot, first_line(exc))
        self._release()
        results.write(self.study, self.folder, self.space, self.metric, self.direction)
        get_logger().warning("trial %d failed: %s; the sweep goes on", job.slot, reason)

    def _put_back(self, job: Job) -> None:
        """The trial waits again (at its checkpoint, if it has one) for this or another worker."""
        from optuna.trial import TrialState

        try:
            self.storage.set_trial_system_attr(job.trial_id, "worker", None)  # unsigned: whoever takes it next signs it
            self.storage.set_trial_state_values(job.trial_id, state=TrialState.WAITING)
        except Exception as exc:
            get_logger().warning("sweep: trial %d could not be put back to waiting (%s)", job.slot, first_line(exc))
        self._release()
        results.write(self.study, self.folder, self.space, self.metric, self.direction)

    def _release(self) -> None:
        heartbeat = getattr(self, "heartbeat", None)
        if heartbeat is not None:
            heartbeat.stop()
            self.heartbeat = None
        if self.slot_lock is not None:
            self.slot_lock.release()
            self.slot_lock = None


def read_description(folder: Path) -> dict:
    return read_json(folder / SWEEP_FILE, "sweep description", "pass a sweep folder: <save_dir>/<name>/sweeps/<study>")

