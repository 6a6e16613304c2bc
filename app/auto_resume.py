"""``train.py --auto-resume``: the same command starts a run, or continues it exactly.

Clusters do not type ``-r``: torchrun's ``--max-restarts``, a Slurm requeue and a pod restart run
the identical command again. With ``--auto-resume`` the command names a run by its id, and
:func:`decide` turns it into an ordinary request (``app/session.py`` then does what it always does):

- ``<save_dir>/<name>/<run id>`` does not exist: a new run with that id;
- it exists: ``-r`` of its newest checkpoint that verifies (``utils.checkpoints.newest_loadable``;
  a damaged newer one is named in one line and left in place), so the run continues in the same
  directory, with the same history and tracker runs, mid-epoch when a step checkpoint is newest;
- the run has finished: "nothing to train", exit code 0.

The config the command resolves (file + overrides) must be the one the run stored, except for the
keys a resume documents changing (:data:`MAY_CHANGE`, e.g. ``trainer.epochs=80`` to train on);
any other difference is one line naming the first differing key.

The run id is ``--run-id``, else one the scheduler keeps across restarts (:func:`scheduler_run_id`).
Every torchrun rank decides from the same id and the same files before the process group exists;
rank 0 alone touches the run directory afterwards, as in any run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.config import Config
from app.session import TrainRequest
from utils.checkpoints import hand_over, newest_loadable
from utils.errors import UserError
from utils.files import read_json

MAY_CHANGE = ("trainer.epochs", "trainer.early_stop_reset", "trainer.verbosity", "trainer.log_step")
"""Keys a continued run may set differently from its stored config: what a resume documents
changing (more epochs, the early-stop count) and what only changes the console."""

NOTHING_TO_TRAIN = 0
"""Exit code of a finished run's command run again: a requeue or restart of a finished job is not an error."""


@dataclass
class Decision:
    """What ``--auto-resume`` made of the command: the request to run, or a finished run's message."""

    request: TrainRequest | None
    run_id: str
    message: str


def scheduler_run_id(env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """An id the scheduler keeps across restarts, and where it came from; None outside one.

    Slurm: ``slurm-<job>`` (``slurm-<array job>_<task>`` in an array; a requeue keeps the job id).
    torchrun: ``torchrun-<TORCHELASTIC_RUN_ID>`` unless it is torchrun's default ``none`` (``--standalone``
    makes one per torchrun, kept across its ``--max-restarts``; ``--rdzv-id`` names one)."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}", "SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}", "SLURM_JOB_ID"
    torchrun = env.get("TORCHELASTIC_RUN_ID", "")
    if torchrun and torchrun != "none":
        return f"torchrun-{torchrun}", "TORCHELASTIC_RUN_ID"
    return None


def first_difference(stored: Any, resolved: Any, path: str = "") -> str | None:
    """The first key path (in ``resolved``'s order) whose value differs, or None when equal."""
    if isinstance(stored, dict) and isinstance(resolved, dict):
        for key in [*resolved, *(key for key in stored if key not in resolved)]:
            found = first_difference(stored.get(key, _ABSENT), resolved.get(key, _ABSENT), f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    return None if stored == resolved else path


_ABSENT = object()


def _value(data: dict, path: str) -> Any:
    for part in path.split("."):
        data = data.get(part, _ABSENT) if isinstance(data, dict) else _ABSENT
    return data


def decide(request: TrainRequest, announce=print) -> Decision:
    """The request ``--auto-resume`` means for ``request`` (a ``-c CONFIG`` command; see the module docstring)."""
    if request.resume is not None or request.config is None:
        raise UserError("--auto-resume: give the command that starts the run (-c CONFIG [overrides]), not -r; it continues the run itself")
    explicit = request.run_id
    found = (explicit, "--run-id") if explicit else scheduler_run_id()
    if found is None:
        raise UserError(
            "--auto-resume: no run id; pass --run-id NAME (outside Slurm, and under torchrun without --rdzv-id or --standalone)"
        )
    run_id, source = found
    announce(f"run id {run_id} (from {source})")
    config = Config.from_file(request.config, request.overrides)
    run_dir = Path(config.settings.save_dir).expanduser() / config["name"] / run_id
    if not run_dir.exists():
        return _said(Decision(replace(request, run_id=run_id), run_id, f"auto-resume: starting {run_dir}"), announce)
    latest = newest_loadable(run_dir / "checkpoints")
    if latest.checkpoint is None:
        why = f" ({latest.skipped[0]})" if latest.skipped else ""
        raise UserError(
            f"--auto-resume: {run_dir} exists but holds no checkpoint that loads{why}; "
            "remove the folder to start the run again, or pass another --run-id"
        )
    for line in latest.skipped:
        announce(f"auto-resume: passing over a damaged checkpoint: {line}")
    stored = latest.checkpoint.config or {}
    resolved = config.to_dict()
    changed = _changes(stored, resolved)
    if changed is not None:
        raise UserError(
            f"--auto-resume: {changed} differs from the run's stored config in {run_dir}; run the command that started it "
            f"(only {', '.join(MAY_CHANGE)} may change), or pass another --run-id for a new run"
        )
    if _finished(run_dir, latest.checkpoint, config):
        return _said(Decision(None, run_id, f"auto-resume: {run_dir} has finished; nothing to train"), announce)
    overrides = [
        f"{key}={json.dumps(value)}"
        for key in MAY_CHANGE
        if (value := _value(resolved, key)) != _value(stored, key) and value is not _ABSENT
    ]
    at = f"epoch {latest.checkpoint.epoch}" + (", mid-epoch" if latest.checkpoint.mid_epoch else "")
    older = " (the newest that loads)" if latest.skipped else ""
    hand_over(latest.checkpoint)  # read and verified once: the resume takes it as it is
    continued = replace(request, config=None, resume=str(latest.path), run_id=None, overrides=overrides)
    return _said(Decision(continued, run_id, f"auto-resume: continuing {run_dir} from {latest.path.name}{older}, {at}"), announce)


def _said(decision: Decision, announce) -> Decision:
    announce(decision.message)
    return decision


def _changes(stored: dict, resolved: dict) -> str | None:
    """The first key that differs other than :data:`MAY_CHANGE`."""
    stored, resolved = json.loads(json.dumps(stored)), json.loads(json.dumps(resolved))  # copies to strip
    for data in (stored, resolved):
        for key in MAY_CHANGE:
            *parents, last = key.split(".")
            node = data
            for part in parents:
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node.pop(last, None)
    return first_difference(stored, resolved)


def _finished(run_dir: Path, checkpoint, config: Config) -> bool:
    """Whether the run ended, and this command would train nothing more: its manifest says the last
    session finished (and not for want of epochs this command adds), or its checkpoint holds every epoch."""
    epoch, mid = checkpoint.epoch or 0, checkpoint.mid_epoch
    completed = epoch - 1 if mid else epoch
    if completed >= config.settings.epochs:
        return True
    path = run_dir / "manifest.json"
    if not path.is_file():
        return False
    manifest = read_json(path, "run's manifest", "repair it, or start a new run with another --run-id")
    resumes = manifest.get("resumes")
    session = resumes[-1] if isinstance(resumes, list) and resumes and isinstance(resumes[-1], dict) else manifest
    ended = session.get("ended") if isinstance(session.get("ended"), dict) else {}
    return ended.get("state") == "finished" and ended.get("reason") != "every epoch trained"
