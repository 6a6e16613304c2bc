"""The trial runner: one trial slot trained as an ordinary run directory (or a cross-validation),
the pruner asked at each epoch (or fold), and the end told to the study.

Every rank runs a trial; rank 0 alone talks to the study (through the :class:`StudyClient`) and
holds the slot (the :class:`SlotTaker`). How a trial ends, and what the worker does then, is in
``app/sweeps/worker.py``'s docstring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.cv import CrossValidation, run_cross_validation
from app.run_records import read_run
from app.session import Session, TrainRequest
from app.sweeps.client import StudyClient
from app.sweeps.jobs import Job
from app.sweeps.slots import SlotTaker, last_checkpoint
from app.sweeps.storage import StorageAway
from logger.logger import get_logger
from utils import distributed
from utils.errors import NonFiniteLossError, UserError
from utils.signals import StopRequest

MAX_FAILURES_IN_A_ROW = 3
"""A worker whose trials fail this many times in a row with a user error (not a diverging loss) stops:
the cause is not the values (a full disk, a read-only folder, a broken data set)."""


class TrialRunner:
    """Trains the jobs the slot taker hands out; ``failures_in_a_row`` counts user errors since the last trial that ended."""

    def __init__(self, client: StudyClient, taker: SlotTaker, stop: StopRequest):
        self.client, self.taker, self.stop = client, taker, stop
        self.request = client.request
        self.failures_in_a_row = 0

    def run_trial(self, job: Job) -> int:
        logger = get_logger()
        folder = self.client.folder / f"trial-{job.slot:04d}"
        shown = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in job.values.items())
        if distributed.is_main_process():
            doing = {"new": "starting", "resume": "resuming", "tell": "finished"}[job.action]
            logger.info("trial %d of %d (%s): %s", job.slot, self.client.space.trials, doing, shown)
        ended_by = None
        try:
            if job.action == "tell":
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
            "tracker_parent": self.client.tracker_parent,
        }
        if job.action == "resume":
            last = last_checkpoint(folder)
            distributed.on_main(lambda: self._report_history(folder))
            request = TrainRequest(resume=str(last), **common)
        else:
            request = self._new_trial(job, folder, **common)
        session = Session(request, self.stop)
        code = session.run_or_abandon()
        return code, session.trainer.ended_by if session.trainer is not None else None

    def _cross_validate(self, job: Job, folder: Path) -> tuple[int, str | None]:
        if job.action == "resume":
            cv = CrossValidation.open(folder, self.request.trust_checkpoint, self.request.devices)
        else:
            request = self._new_trial(job, folder, trust_checkpoint=self.request.trust_checkpoint, devices=self.request.devices)
            cv = CrossValidation.start(request, self.request.folds, self.request.command)
        cv.hint = self.request.hint
        cv.tracker_parent = self.client.tracker_parent
        cv.after_fold = self._fold_hook()
        code = run_cross_validation(cv, self.stop, new=job.action == "new")
        return code, cv.ended_by

    def _new_trial(self, job: Job, folder: Path, **settings: Any) -> TrainRequest:
        """A new run in ``folder``: the base config with the trial's values as overrides."""
        return TrainRequest(
            config_data=self.client.raw,
            config_source=f"{self.request.config} (trial {job.slot})",
            overrides=[*self.request.overrides, *self.client.space.overrides(job.values)],
            run_dir=folder,
            **settings,
        )

    def _pruned(self, value: Any, step: int) -> bool:
        """Rank 0: report ``value`` at ``step`` and ask the pruner (a value that is not a number: no)."""
        if not isinstance(value, (int, float)):
            return False
        self.taker.trial.report(float(value), step)
        return self.taker.trial.should_prune()

    def _pruning_hook(self):
        """Every rank, after each epoch's checkpoint: rank 0 reports the monitored value and asks the pruner."""
        metric = self.client.metric

        def hook(row: dict) -> str | None:
            prune = distributed.on_main(lambda: self._pruned(row.get(metric), row["epoch"]))
            return f"pruned by the {self.client.space.pruner} pruner" if prune else None

        return hook

    def _fold_hook(self):
        def hook(fold: int, summary: dict | None) -> str | None:
            def decide() -> bool:
                across = summary["across"].get(self.client.metric) if summary else None
                return across is not None and self._pruned(float(across["mean"]), fold)

            return f"pruned by the {self.client.space.pruner} pruner" if distributed.on_main(decide) else None

        return hook

    def _report_history(self, folder: Path) -> None:
        """A resumed trial's epochs so far, reported again: a trial re-enqueued after its heartbeats
        stopped starts with none, and the pruner compares epoch with epoch."""
        try:
            rows = read_run(folder).rows
        except UserError:
            return
        for row in rows:
            value = row.get(self.client.metric)
            if isinstance(value, (int, float)):
                self.taker.trial.report(float(value), row["epoch"])

    # -- rank 0: the end of a trial, told -------------------------------------------------------------

    def _tell(self, job: Job, folder: Path, ended_by: str | None) -> None:
        value, epochs = self.client.record_end(job, folder, ended_by)
        self.taker.release()
        self.client.say_end(job, folder, value, epochs)

    def _fail(self, job: Job, reason: str) -> None:
        self.client.record_failure(job, reason)
        self.taker.release()
        self.client.write_results()
        get_logger().warning("trial %d failed: %s; the sweep goes on", job.slot, reason)

    def _put_back(self, job: Job) -> None:
        self.client.record_waiting(job)
        self.taker.release()
        self.client.write_results()
