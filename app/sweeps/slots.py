"""The slot taker: which trial slot this worker trains next, and what it holds while it does.

Rank 0 fails trials whose heartbeats stopped (``optuna.storages.fail_stale_trials``), then, under
the sweep folder's lock, takes over a RUNNING trial of this machine and folder whose worker is gone
(its slot lock is free), else wins the lowest WAITING slot with Optuna's atomic WAITING -> RUNNING
step. It signs the trial (host, pid, folder), holds the slot lock and the trial's heartbeat until
:meth:`SlotTaker.release`, asks the sampler for the trial's values and says what the slot's folder
holds (new, resume, tell). See ``app/sweeps/worker.py`` for what a worker does with what it finds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from app.cv import is_cv_dir, summary_of
from app.run_dir import lock_holder
from app.run_records import read_run, training_end_reason
from app.sweeps.client import StudyClient
from app.sweeps.jobs import Job
from app.sweeps.locks import Heartbeat, SlotLock, SlotTakingLock
from app.sweeps.study import slot_of
from logger.logger import get_logger
from utils.checkpoints import find_checkpoint
from utils.errors import UserError, first_line


def last_checkpoint(folder: Path) -> Path | None:
    """A trial's ``last`` checkpoint (a file or a DCP snapshot), if it has one."""
    return find_checkpoint(folder / "checkpoints", "last")


class SlotTaker:
    """Takes this worker's trial slot and holds it (rank 0): ``slot_lock`` and ``heartbeat`` while a
    trial is held, ``trial`` (Optuna's ``Trial`` of the held slot, with its sampler and pruner) for
    suggestions and reports."""

    def __init__(self, client: StudyClient):
        self.client = client
        self.host = socket.gethostname()
        self.slot_lock: SlotLock | None = None
        self.heartbeat: Heartbeat | None = None
        self.trial: Any = None

    def next_job(self) -> Job | None:
        """Rank 0: take over a dead local worker's trial, else take the lowest waiting slot."""
        import optuna
        from optuna.trial import TrialState

        client = self.client
        if client.space.heartbeat:
            try:
                optuna.storages.fail_stale_trials(client.study)
            except Exception as exc:
                get_logger().warning("sweep: could not check for stale trials (%s)", first_line(exc))
        with SlotTakingLock(client.folder):
            trials = [t for t in client.study.get_trials(deepcopy=False) if (slot_of(t) is not None and slot_of(t) < client.space.trials)]
            for trial in sorted(trials, key=lambda t: slot_of(t)):
                if trial.state != TrialState.RUNNING or not self._mine(trial):
                    continue
                lock = SlotLock(client.folder, slot_of(trial))
                if not lock.acquire():
                    continue  # its worker is alive
                if client.storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                    lock.release()
                    continue
                return self._take_or_put_back(trial, lock, adopted=True)
            for trial in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: (slot_of(t), t.number)):
                lock = SlotLock(client.folder, slot_of(trial))
                if not lock.acquire():
                    continue
                try:
                    won = client.storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING)
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
            return self.client.request.storage is None
        return isinstance(worker, dict) and worker.get("host") == self.host and worker.get("folder") == str(self.client.folder.resolve())

    def _take_or_put_back(self, trial, lock: SlotLock, adopted: bool) -> Job:
        """:meth:`_take`; a signal or an error while taking puts the trial back to WAITING (never left RUNNING unsigned)."""
        from optuna.trial import TrialState

        try:
            return self._take(trial, lock, adopted)
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.storage.set_trial_state_values(trial._trial_id, state=TrialState.WAITING)
            if self.slot_lock is None:
                lock.release()
            self.release()
            raise

    def _take(self, trial, lock: SlotLock, adopted: bool) -> Job:
        client = self.client
        client.storage.set_trial_system_attr(trial._trial_id, "worker", {"host": self.host, "pid": os.getpid(), "folder": str(client.folder.resolve())})
        self.slot_lock = lock
        self.heartbeat = Heartbeat(client.storage, trial._trial_id, client.space.heartbeat).start()
        slot = slot_of(trial)
        self.trial = self._optuna_trial(trial._trial_id, slot)
        values = {param.key: self._suggest(param) for param in client.space.params}
        action = self._action_for(client.folder / f"trial-{slot:04d}")
        if adopted:
            get_logger().info("sweep: trial %d's worker is gone; this worker takes it over", slot)
        return Job(slot, trial.number, trial._trial_id, values, action)

    def _optuna_trial(self, trial_id: int, slot: int):
        import optuna

        client = self.client
        client.study.sampler = client.space.make_sampler(slot)
        client.study.pruner = client.space.make_pruner(client.base.settings.epochs if client.request.folds is None else client.request.folds)
        return optuna.Trial(client.study, trial_id)

    def _suggest(self, param) -> Any:
        trial = self.trial
        if param.kind == "choices":
            return trial.suggest_categorical(param.key, list(param.choices))
        if param.kind == "int":
            return trial.suggest_int(param.key, param.low, param.high, step=param.step or 1, log=param.log)
        return trial.suggest_float(param.key, param.low, param.high, step=param.step, log=param.log)

    def _action_for(self, folder: Path) -> str:
        """What to do with the slot's folder (``Job.action``): ``new`` (it holds nothing, or nothing worth
        keeping), ``resume`` (its checkpoint), ``tell`` (its run finished: only the study is told)."""
        if not folder.exists():
            return "new"
        folds = self.client.request.folds
        if folds is not None:
            if not is_cv_dir(folder):
                return self._start_over(folder)
            summary = summary_of(folder, "remove it")
            return "tell" if len(summary.get("per_fold", [])) >= folds else "resume"
        last = last_checkpoint(folder)
        if last is None:
            return self._start_over(folder)
        try:
            finished = read_run(folder).state == "finished"
        except UserError:
            finished = False
        return "tell" if finished or training_end_reason(last) is not None else "resume"  # killed after its last checkpoint: done

    def _start_over(self, folder: Path) -> str:
        if lock_holder(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)
        return "new"

    def release(self) -> None:
        """Stop the held trial's heartbeat and free its slot lock (nothing held: nothing to do)."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        if self.slot_lock is not None:
            self.slot_lock.release()
            self.slot_lock = None
