"""Weights & Biases through ``wandb`` itself, imported only when a run names it; offline unless asked.

The mode is ``logger.wandb.mode``, else ``$WANDB_MODE``, else ``offline``: the run is written to
``<run_dir>/wandb/offline-run-<time>-<id>/`` (its ``run-<id>.wandb`` holds the history), nothing
needs an account or a network, and ``wandb sync <run_dir>/wandb/offline-run-*`` uploads it later.
Every wandb file of a run stays inside its run directory. It holds the same as MLflow: the
resolved config, every epoch row's numbers (plotted against ``epoch``), the step scalars (against
``train/global_step``), the run directory, command, git commit and how it started in its summary,
and at the end the run's files (and the best checkpoint with ``logger.log_checkpoints``, linked,
not copied, where the file system allows). A fold or a trial is in its parent's ``group``.

The run id is chosen here, so it is in ``trackers.json`` and the checkpoints from the first one
on; a resume continues it (``resume="allow"``: offline, a second offline-run folder with the same
id, which ``wandb sync`` appends to the same run). What it holds is known from ``trackers.json``'s
marks (and, online, from the run's summary): only epochs and steps after them are sent.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import string
from pathlib import Path
from typing import Any

from logger.trackers.settings import TrackerSettings
from logger.trackers.tracker import Tracker, numbers, safe_key

KINDS = {"cv": "fold", "sweep": "trial"}
"""A child's W&B ``job_type`` by its parent's kind."""


def new_id() -> str:
    """A W&B run id: 8 lowercase letters and digits."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` holds ``source``'s bytes (a file or a folder of files): hard links where possible."""
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_or_copy_file, dirs_exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy_file(str(source), str(target))


def _link_or_copy_file(source: str, target: str) -> None:
    if os.path.lexists(target):
        os.unlink(target)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class WandbTracker(Tracker):
    """One run directory as one W&B run (offline unless asked): the config, epoch rows, step scalars and files;
    a resume continues the same id."""

    name = "wandb"

    def __init__(self, settings: TrackerSettings, run, stored: dict | None = None):
        super().__init__(settings, run, stored)
        self.project, self.entity, self.mode = settings.wandb_project, settings.wandb.get("entity"), settings.wandb_mode
        same = self.stored.get("project") == self.project and self.stored.get("entity") == self.entity and self.stored.get("id")
        self.id = self.stored["id"] if same else new_id()
        self.continuing = bool(same)
        if same:
            self.epoch, self.step = int(self.stored.get("epoch") or 0), int(self.stored.get("step") or 0)
        self.wandb_run: Any = None
        self.described = False  # config, summary facts and metric definitions sent to the open run
        self.defined: set[str] = set()

    @property
    def is_open(self) -> bool:
        return self.wandb_run is not None

    def ids(self) -> dict:
        return {"id": self.id, "project": self.project, "entity": self.entity, "mode": self.mode}

    def open(self) -> None:
        if self.wandb_run is None:
            self._init()
        if not self.described:
            self._describe()

    def _init(self) -> None:
        import wandb

        if self.mode == "online" and not wandb.login(prompt=False, verify=False):
            raise RuntimeError("online mode needs an API key: run `wandb login` or set WANDB_API_KEY, or use logger.wandb.mode=offline")
        parent = self.parent_entry()
        settings = wandb.Settings(
            console="off",
            silent=True,
            disable_git=True,
            save_code=False,
            x_save_requirements=False,
            finish_timeout=self.settings.finish_timeout,  # W&B's own exit hook waits no longer than the run's end does
        )
        self.wandb_run = wandb.init(
            project=self.project,
            entity=self.entity,
            id=self.id,
            resume="allow",
            dir=str(self.run.run_dir),
            name=self.run.run_dir.name,
            group=parent.get("group"),
            job_type=KINDS.get((self.run.parent or {}).get("kind"), "train"),
            mode=self.mode,
            settings=settings,
            reinit="create_new",
        )
        self.described, self.defined = False, set()

    def _describe(self) -> None:
        run, source = self.wandb_run, self.source_entry()
        run.config.update(self.run.config, allow_val_change=True)
        if run.resumed and isinstance(run.summary.get("epoch"), (int, float)):
            self.epoch = max(self.epoch, int(run.summary["epoch"]))  # online: what the server holds
        facts = {k: v for k, v in self.run.tags().items() if k != "mode" or not self.continuing}  # how it first started
        if source.get("id"):
            facts["finetuned_from"] = f"{source.get('entity') or ''}/{source.get('project')}/{source['id']}".lstrip("/")
        run.summary.update(facts)
        run.define_metric("epoch")
        run.define_metric("train/global_step")
        run.define_metric("train/step_*", step_metric="train/global_step")
        self.described = True

    def log(self, pending: list[tuple]) -> None:
        try:
            super().log(pending)
        except (ConnectionError, EOFError):
            self.lost()
            raise

    def lost(self) -> None:
        """W&B's service process is gone (killed, crashed): the next try starts a new one and continues
        the run (a new offline folder); torn down now, its exit hook has nothing left to fail on."""
        self.wandb_run = None
        import wandb

        with contextlib.suppress(Exception, SystemExit):
            wandb.teardown()

    def send_epoch(self, row: dict, when: float) -> None:
        values = {safe_key(key): value for key, value in numbers(row).items()}
        for key in values.keys() - self.defined - {"epoch"}:
            self.wandb_run.define_metric(key, step_metric="epoch")
            self.defined.add(key)
        self.wandb_run.log(values)

    def send_steps(self, items: list[tuple[dict, int, float]]) -> None:
        for values, step, _ in items:
            self.wandb_run.log({**{safe_key(key): value for key, value in numbers(values).items()}, "train/global_step": step})

    def finish(self, state: str, files: list[Path], best: Path | None) -> None:
        try:
            self._finish(state, files, best)
        except (ConnectionError, EOFError):
            self.lost()
            raise

    def _finish(self, state: str, files: list[Path], best: Path | None) -> None:
        run = self.wandb_run
        folder = Path(run.dir)
        for path in files:
            shutil.copyfile(path, folder / path.name)  # inside the run's files folder: saved without a symlink or a note on the console
            run.save(str(folder / path.name), base_path=str(folder), policy="now")
        if best is not None:
            run.summary["best_checkpoint"] = str(best)
            if self.settings.log_checkpoints:
                link_or_copy(best, folder / "checkpoints" / best.name)  # checkpoints are replaced by a rename, never rewritten: a link stays as it was
                pattern = folder / "checkpoints" / best.name / "*" if best.is_dir() else folder / "checkpoints" / best.name
                run.save(str(pattern), base_path=str(folder), policy="now")
        if state == "stopped":
            run.mark_preempting()
        run.finish(exit_code=0 if state == "finished" else 1)
        self.wandb_run = None

    def discard(self) -> None:
        self.wandb_run.finish(exit_code=1)
        self.wandb_run = None
