"""What a finished, stopped or running run directory says about itself, read without changing it.

``runs.py`` lists runs from these records, a cross-validation summarises its folds with
:func:`best_row`, and a sweep reads its trials' results the same way. Everything comes from the
files every run writes: ``config.json`` (what was asked), ``metrics.jsonl`` (one row per epoch),
``manifest.json`` (how each session of the run ended: ``logger/manifest.py``'s ``record_end``) and
the run directory's lock (``app/run_dir.py``: a process holds it while the run trains).

A run's **state** is that of its latest session:

- ``running``: a process holds the run directory's lock;
- ``finished``: it trained every epoch, stopped early on its monitor, or a driver (a pruner) ended it;
- ``stopped``: a signal stopped it at a checkpoint; ``train.py -r .../last.pth`` continues it;
- ``failed``: an error ended it, or its process died without a word (killed, out of memory):
  nobody holds the lock and the session recorded no end. Its ``last`` checkpoint, if any, resumes it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.run_dir import lock_holder, read_config, read_manifest, read_metrics
from utils.errors import UserError
from utils.nested import flatten

STATES = ("running", "finished", "stopped", "failed")
MAX_DEPTH = 6
"""How deep below a folder :func:`find_run_dirs` looks (``save_dir/name/run_id/fold-i`` is 3)."""
TRACKER_STORES = ("mlartifacts", "mlruns")
"""MLflow's artifact and file stores in a save dir: they hold copies of runs' files, not runs."""


def best_row(rows: list[dict], monitor: Any) -> dict | None:
    """The row a monitor (``"min val_loss"``) picks: the first with the best finite value; the last
    row when the monitor is ``off`` or names a value no row has. None without rows."""
    if not rows:
        return None
    mode, _, metric = str(monitor).partition(" ")
    best, best_value = None, None
    if mode in ("min", "max") and metric:
        for row in rows:
            value = row.get(metric)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if best_value is None or (value < best_value if mode == "min" else value > best_value):
                best, best_value = row, value
    return best if best is not None else rows[-1]


@dataclass
class RunView:
    """One run directory as ``runs.py`` shows it: its latest config, metrics rows, manifest and state (running,
    finished, stopped, failed)."""

    path: Path
    config: dict
    rows: list[dict]
    manifest: dict
    state: str
    ended: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def monitor(self) -> str:
        trainer = self.config.get("trainer")
        return str(trainer.get("monitor", "off")) if isinstance(trainer, dict) else "off"

    @property
    def epochs_planned(self) -> Any:
        trainer = self.config.get("trainer")
        return trainer.get("epochs") if isinstance(trainer, dict) else None

    def best(self) -> tuple[str | None, Any, Any]:
        """(monitored metric, its best value, that epoch); (None, None, None) when nothing is monitored or no epoch ended."""
        mode, _, metric = self.monitor.partition(" ")
        row = best_row(self.rows, self.monitor)
        if mode not in ("min", "max") or row is None or metric not in row:
            return (metric or None), None, None
        return metric, row[metric], row["epoch"]


def latest_config(path: Path) -> Path:
    """The config the run last trained with: ``config-resume-N.json`` of its latest resume that
    changed it (``trainer.epochs=3``, say), else ``config.json``."""
    resumed = []
    for candidate in path.glob("config-resume-*.json"):
        number = candidate.stem.rsplit("-", 1)[-1]
        if number.isdigit():
            resumed.append((int(number), candidate))
    return max(resumed)[1] if resumed else path / "config.json"


def read_run(path: Path, fix: str = "repair it, or move the run directory away") -> RunView:
    """A run directory's record, its files read strictly (``app/run_dir.py``); a file that cannot
    be read is a :class:`UserError` naming it and ending with ``fix``."""
    config = read_config(latest_config(path), fix)
    manifest = read_manifest(path, fix) or {}
    rows = read_metrics(path, fix)
    ended = last_session(manifest).get("ended")
    ended = ended if isinstance(ended, dict) else {}
    if lock_holder(path) is not None:
        state = "running"
    elif ended.get("state") in STATES:
        state = ended["state"]
    else:
        state = "failed"
    return RunView(path, config, rows, manifest, state, ended)


def last_session(manifest: dict) -> dict:
    """The manifest entry of the run's latest session: its latest resume, or the run itself."""
    resumes = manifest.get("resumes")
    if isinstance(resumes, list) and resumes:
        return resumes[-1] if isinstance(resumes[-1], dict) else {}  # damaged: no end known, never the first session's
    return manifest


def is_run_dir(path: Path) -> bool:
    try:
        return (path / "config.json").is_file() and ((path / "manifest.json").is_file() or (path / "metrics.jsonl").is_file())
    except OSError:
        return False


def find_run_dirs(folder: Path) -> list[Path]:
    """Every run directory at or below ``folder`` (a cross-validation's folds and a sweep's trials
    included), in path order; hidden folders (a claim being made), MLflow's stores and links are not entered."""
    if is_run_dir(folder):
        return [folder]
    found: list[Path] = []
    base_depth = len(folder.parts)
    for root, dirs, _files in os.walk(folder, followlinks=False):
        here = Path(root)
        dirs[:] = sorted(name for name in dirs if not name.startswith(".") and name not in TRACKER_STORES)
        if len(here.parts) - base_depth >= MAX_DEPTH:
            dirs[:] = []
        kept = []
        for name in dirs:
            if is_run_dir(here / name):
                found.append(here / name)
            else:
                kept.append(name)
        dirs[:] = kept
    return sorted(found)


def training_end_reason(checkpoint: Path) -> str | None:
    """Why the run whose ``last`` checkpoint this is has nothing left to train (``"all epochs"``,
    ``"early stop"``), or None. For the drivers of runs of runs: a run killed after its last
    checkpoint but before its end was recorded is finished, to be read, not resumed (a resume would
    find nothing to train, or train on past its early stop). A checkpoint that cannot be read: None
    (resuming it says what is wrong)."""
    from base.progress import Progress
    from utils.checkpoints import load_checkpoint

    try:
        data = load_checkpoint(checkpoint).data
        progress = Progress(**data["progress"])
        epochs = data["config"]["trainer"]["epochs"]
        stopped_early = bool((data.get("monitor") or {}).get("stopped_early"))
    except (UserError, KeyError, TypeError):
        return None
    if stopped_early and not progress.batch_in_epoch:
        return "early stop"
    return "all epochs" if isinstance(epochs, int) and progress.completed_epochs >= epochs else None


def differing_keys(configs: list[dict]) -> list[str]:
    """The dotted config keys whose values are not the same in every config (absent counts as a value)."""
    flat = [flatten(config) for config in configs]
    keys = sorted({key for one in flat for key in one})
    return [key for key in keys if len({(key in one, json.dumps(one.get(key), sort_keys=True, default=str)) for one in flat}) > 1]
