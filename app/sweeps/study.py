"""A sweep's Optuna study: its storage, its identity, and its fixed number of trial slots.

**Slots.** The study's total is exact, whatever number of workers ask at once: the trials are
created up front, one WAITING trial per *slot* (``user_attrs["slot"]``: 0, 1, ...; the number the
sweep shows and the name of its run directory ``trial-NNNN``), and a worker takes one with
Optuna's own atomic WAITING -> RUNNING transition (``set_trial_state_values``), as ``Study.ask``
pops enqueued trials. Nobody creates a trial beyond the slots (so a study holds at most
``space.MAX_TRIALS`` of them, said before the first is made). Creating the slots is done by one
worker: the one whose ``create_study`` of a marker study ``<study>.setup`` succeeds (the storage
refuses a second study of that name); the marker is deleted when the slots are there, and a
marker left by a worker that died while creating them is taken over (same host: its process is
gone; another host: after ten minutes). A larger ``--trials`` on a later run adds slots the same
way; a smaller one leaves the slots above it waiting.

**Identity.** The study remembers its space and its resolved base config (``user_attrs["sweep"]``);
running the same sweep command again continues the study, and a space or config that differs is a
one-line error naming the first key that changed.

**Heartbeats.** A worker records a heartbeat for its running trial every ``heartbeat`` seconds
(Optuna's ``RDBStorage(heartbeat_interval=...)``). A trial whose heartbeats stopped for three
intervals is failed by the next worker (``optuna.storages.fail_stale_trials``) and its slot is
enqueued again with the same values (``retry_of``), so a worker on another machine, or a re-run,
takes it over. On one machine a dead worker's trial is taken over at once, without waiting for the
heartbeat: see ``app/sweeps/worker.py``.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from typing import Any

from app.run_records import differing_keys
from app.sweeps.space import Space
from app.sweeps.storage import default_storage, masked, open_storage  # noqa: F401 - where callers found them
from utils.errors import UserError
from utils.files import process_alive
from utils.nested import flatten

MARKER_STALE_SECONDS = 600


def quiet_optuna() -> None:
    """Optuna's own log lines (``Trial 3 finished ...``) and experimental-API warnings stay out of the console."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*already reported.*")
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used with Study.optimize.*")


def open_study(storage, name: str, identity: dict, direction: str):
    """The study ``name``, created with ``identity`` if new; an existing study must have the same identity."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        stored = _wait_for_identity(study)
        if stored is None:  # its creator died before saying what it is: the first to come says it
            study.set_user_attr("sweep", identity)
            stored = study.user_attrs.get("sweep", identity)
        check_same_sweep(stored, identity, name)
        return study
    study.set_user_attr("sweep", identity)
    return study


def _wait_for_identity(study, patience: float = 10.0) -> dict | None:
    deadline = time.monotonic() + patience
    while True:
        stored = study.user_attrs.get("sweep")
        if stored is not None or time.monotonic() > deadline:
            return stored
        time.sleep(0.2)


def check_same_sweep(stored: Any, identity: dict, name: str) -> None:
    """One line naming the first key of the space or config that differs from the stored study's."""
    if not isinstance(stored, dict):
        raise UserError(f"--study {name}: the stored study holds no sweep description; it was not made by sweep.py: choose another --study")
    if stored == identity:
        return
    changed = differing_keys([stored, identity])
    if not changed:
        return
    key = changed[0]
    old, new = flatten(stored).get(key, "(absent)"), flatten(identity).get(key, "(absent)")
    more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
    raise UserError(
        f"--study {name}: {key} is {new!r} here but {old!r} in the stored study{more}; a re-run continues the same sweep: "
        f"restore it, or start another sweep with --study NEW_NAME"
    )


def slot_of(trial) -> int | None:
    slot = trial.user_attrs.get("slot")
    return slot if isinstance(slot, int) and not isinstance(slot, bool) else None


def ensure_slots(study, space: Space) -> None:
    """Make sure slots ``0 .. space.trials - 1`` exist (see the module docstring)."""
    import optuna

    grid = space.grid() if space.sampler == "grid" else None
    marker = f"{study.study_name}.setup"
    seen_since: float | None = None
    while True:
        present = {slot_of(trial) for trial in study.get_trials(deepcopy=False)}
        missing = [slot for slot in range(space.trials) if slot not in present]
        if not missing:
            return
        try:
            setup = optuna.create_study(storage=study._storage, study_name=marker)
        except optuna.exceptions.DuplicatedStudyError:
            seen_since = seen_since or time.monotonic()
            if _marker_is_stale(study._storage, marker, time.monotonic() - seen_since):
                try:
                    optuna.delete_study(study_name=marker, storage=study._storage)
                except KeyError:
                    pass  # another worker took it over first
            time.sleep(0.2)
            continue
        try:
            setup.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
            present = {slot_of(trial) for trial in study.get_trials(deepcopy=False)}
            for slot in range(space.trials):
                if slot not in present:
                    study.enqueue_trial(grid[slot] if grid else {}, user_attrs={"slot": slot})
        finally:
            optuna.delete_study(study_name=marker, storage=study._storage)


def _marker_is_stale(storage, marker: str, waited: float) -> bool:
    import optuna

    try:
        owner = optuna.load_study(study_name=marker, storage=storage).user_attrs.get("owner")
    except KeyError:
        return False  # gone already: the loop looks again
    if not isinstance(owner, dict):
        return waited > 60  # made, but its owner has not signed it for a minute
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not process_alive(owner["pid"])
    return time.time() - float(owner.get("time", 0)) > MARKER_STALE_SECONDS


def retry_stale_trial(study, trial) -> None:
    """Heartbeat callback: the failed trial's slot waits again, with the same values, to be resumed."""
    slot = slot_of(trial)
    if slot is not None:
        study.enqueue_trial(dict(trial.params), user_attrs={"slot": slot, "retry_of": trial.number})
