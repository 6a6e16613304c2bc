"""One sweep worker: take a trial slot, train it as an ordinary run directory, tell the study, repeat.

The worker is three parts: the study client (``client.py``: the study, its storage and folder,
what they are told), the slot taker (``slots.py``: locks, heartbeats, stale trials, suggestions)
and the trial runner (``trials.py``: a trial as a run, its pruning, its end); ``Sweep`` here checks
the request, wires them and loops.

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

import os

from app.config import Config, read_config
from app.cv import fold_config, join_process_group
from app.sweeps.client import SWEEP_FILE, StudyClient, read_description
from app.sweeps.jobs import Job, SweepRequest
from app.sweeps.slots import SlotTaker
from app.sweeps.space import read_space
from app.sweeps.storage import lost_connection_said, masked
from app.sweeps.study import quiet_optuna
from app.sweeps.trials import MAX_FAILURES_IN_A_ROW, TrialRunner
from logger.logger import get_logger, setup_logging
from utils import distributed
from utils.errors import UserError, first_line
from utils.signals import StopRequest

__all__ = ["MAX_FAILURES_IN_A_ROW", "SWEEP_FILE", "Job", "Sweep", "SweepRequest", "read_description"]


class Sweep:
    """One worker of a sweep: :meth:`prepare` checks everything and opens the study, :meth:`run`
    takes and trains slots until none is left for it."""

    def __init__(self, request: SweepRequest, stop: StopRequest):
        self.request = request
        self.stop = stop
        self.client: StudyClient | None = None
        self.taker: SlotTaker | None = None
        self.runner: TrialRunner | None = None

    def prepare(self) -> None:
        """Check the config and the space (errors here create nothing), then open (or create) the study."""
        request = self.request
        quiet_optuna()  # the space's check tries its sampler and pruner on a study in memory
        base = Config.from_file(request.config, request.overrides)
        if not request.trust_checkpoint:
            base.check_checkpoints_resumable()
        raw = read_config(request.config)  # through the bases it extends (app/config/extends.py)
        space = read_space(request.space, request.trials, base, request.config, request.overrides, request.trust_checkpoint)
        if request.folds is not None:
            if isinstance(request.folds, bool) or not isinstance(request.folds, int) or request.folds < 2:
                raise UserError(f"--folds: must be a whole number of at least 2, got {request.folds!r}")
            fold_config(base.to_dict(), request.folds, 0, request.config, True)
        client = self.client = StudyClient(request, base, raw, space)
        identity = client.identity()
        join_process_group(base["device"], request.devices)
        setup_logging(base.settings.verbosity, int(os.environ.get("RANK", 0)))
        self.taker = SlotTaker(client)
        self.runner = TrialRunner(client, self.taker, self.stop)
        with lost_connection_said(masked(client.url)):
            distributed.on_main(lambda: client.open(identity))  # rank 0 talks to the study; a refusal there stops every rank

    def run(self) -> int:
        """Trials until none is left for this worker; 0, or the exit code of a trial a signal stopped."""
        logger, client = get_logger(), self.client
        if distributed.is_main_process():
            logger.info("sweep %s: %d trials, %s sampler, %s pruner, objective %s %s; storage %s; folder %s",
                        client.name, client.space.trials, client.space.sampler, client.space.pruner, client.direction, client.metric,
                        masked(client.url), client.folder)  # fmt: skip
            logger.info("continue or add workers with: %s", self.request.hint)
        code = 0
        import sqlalchemy.exc

        try:
            with lost_connection_said(masked(client.url)):  # one that was not retried: creating a trial
                while code == 0:
                    self.stop.while_starting()  # between trials a signal stops the worker at once
                    job = distributed.on_main(self.taker.next_job)
                    if job is None:
                        break
                    code = self.runner.run_trial(job)
        except sqlalchemy.exc.SQLAlchemyError as exc:  # the database went away: the trials' folders are intact
            self.taker.release()
            raise UserError(f"--storage: {masked(client.url)}: {first_line(exc)}; run the same command again to continue") from None
        except BaseException:
            self.taker.release()  # a slot still held (its end could not be told): free for the next worker here
            raise
        if distributed.is_main_process():
            table = client.write_results()
            waiting = client.unfinished()
            if code == 0:
                logger.info("sweep %s: no trial left for this worker%s\n%s", client.name,
                            f" ({len(waiting)} waiting or running elsewhere)" if waiting else "", table)  # fmt: skip
            if code != 0 or not waiting:  # while other workers train, the parent stays open for them
                client.close_parent("stopped" if code else "finished")
        return code
