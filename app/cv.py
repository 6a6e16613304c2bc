"""K-fold cross-validation as one run: ``python train.py -c CONFIG --folds K``.

A *run of runs*: the CV run directory ``<save_dir>/<name>/<run_id>/`` holds

- ``cv.json``: the number of folds, the resolved config every fold starts from, the command;
- ``fold-0/`` ... ``fold-{K-1}/``: ordinary run directories, each made by the same lifecycle as a
  single run (``app/session.py``: checks, an exclusive claim, checkpoints, exact resume), whose
  config is the CV's with ``data_loader.args.folds: K`` and ``data_loader.args.fold: i``;
- ``cv_summary.json``: per fold, the best epoch (``trainer.monitor``; the last epoch when it is
  ``off``) and every validation value there; across the folds, the mean, the standard deviation
  (of the folds' values, ``ddof=0``), the minimum and the maximum of each. Rewritten atomically
  after each fold, and read back by a resume to know which folds are done.

The folds run one after another in this process (under torchrun, each on every process). A fold
stopped by a signal or a crash is continued by ``python train.py -r CV_RUN_DIR`` exactly where it
stopped, mid-epoch included, then the folds left; a CV whose folds are all done is one line. A fold
folder without any checkpoint (killed before its first one) holds nothing worth keeping and starts over.

The driver's own files are checked like a run's history before anything trains or is averaged:
``cv.json`` and ``cv_summary.json`` are read strictly (:func:`read_description`,
:func:`read_summary`), the CV's directory holds no link, and every ``fold-i`` there must be fold
``i`` of the partition ``cv.json`` describes (:func:`check_fold`: its config's ``seed`` and
``data_loader``, its ``split.json``; for an ensemble, its checkpoint's config too). A finished fold
whose folder was removed is trained again; anything else that does not fit is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.export import export_cv_at_end
from app.run_dir import CHECKPOINTS, RunDirClaim, lock_holder, read_config, refuse_links
from app.run_records import best_row, latest_config, read_run, training_end_reason
from app.session import Session, TrainRequest, claim_new_run_dir, config_of, launcher
from logger.logger import get_logger, setup_logging
from logger.trackers import close_parent, open_parent
from utils import distributed
from utils.checkpoints import find_checkpoint
from utils.device import limit_visible_gpus, select_device
from utils.errors import UserError
from utils.files import read_json, write_atomic
from utils.signals import StartupStopped, StopRequest

CV_FILE = "cv.json"
SUMMARY = "cv_summary.json"


def is_cv_dir(path: str | Path) -> bool:
    try:
        return (Path(path) / CV_FILE).is_file()
    except OSError:
        return False


def read_description(folder: Path, advice: str = "it is not a cross-validation this code can read") -> dict:
    """``cv.json``, read strictly: ``folds`` a whole number of at least 2, ``config`` a mapping with a
    ``data_loader``. The CV's run directory may hold no link (``app/run_dir.py``): a ``fold-i`` that
    links to another run is never taken for a fold."""
    refuse_links(folder)
    data = read_json(folder / CV_FILE, "cross-validation description", advice)
    folds, config = data.get("folds"), data.get("config")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise UserError(f"{folder / CV_FILE}: damaged (folds {folds!r}, not a whole number of at least 2); {advice}")
    if not isinstance(config, dict) or not isinstance(config.get("data_loader"), dict):
        raise UserError(f"{folder / CV_FILE}: damaged (config is {type(config).__name__}, not a config with a data_loader); {advice}")
    return data


def folds_of(folder: Path, fold: int | None = None) -> int:
    """How many folds the CV in ``folder`` has (its ``cv.json``); ``fold``, when given, must be one of them."""
    folds = read_description(folder)["folds"]
    if fold is not None and not 0 <= fold < folds:
        raise UserError(f"--fold: {fold} is not a fold of {folder} (0 to {folds - 1})")
    return folds


def summary_of(folder: Path, advice: str) -> dict:
    """``cv_summary.json`` (a mapping), or ``{}`` before a fold has finished; ``advice`` ends its errors (a fix, or why the folder cannot be used)."""
    path = folder / SUMMARY
    return read_json(path, "cross-validation summary", advice) if os.path.lexists(path) else {}


def read_summary(folder: Path, folds: int, fix: str) -> dict[int, dict]:
    """The folds ``cv_summary.json`` lists as finished, by number, read strictly: every entry a fold of
    this CV (``0`` to ``folds - 1``, once, in its own ``fold-i``), and the summary made for ``folds``
    folds (a ``cv.json`` edited to another count is not mixed with the folds of the old partition)."""
    path = folder / SUMMARY
    summary = summary_of(folder, fix)
    made_for = summary.get("folds", folds)
    if made_for != folds:
        raise UserError(
            f"{path}: made for {made_for!r} folds, but {CV_FILE} says {folds}: the folds of two partitions would mix; "
            f"put back \"folds\": {made_for!r} in {CV_FILE}, or start a new cross-validation with --folds {folds}"
        )
    entries = summary.get("per_fold", [])
    if not isinstance(entries, list):
        raise UserError(f"{path}: damaged (per_fold is {type(entries).__name__}, not a list of folds); {fix}")
    finished: dict[int, dict] = {}
    for entry in entries:
        fold = entry.get("fold") if isinstance(entry, dict) else None
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
            raise UserError(f"{path}: damaged (an entry of per_fold is not one of folds 0 to {folds - 1}: {json.dumps(entry)[:80]}); {fix}")
        if fold in finished:
            raise UserError(f"{path}: damaged (fold {fold} is listed twice); {fix}")
        if entry.get("run_dir") != f"fold-{fold}" or not isinstance(entry.get("metrics"), dict):
            raise UserError(f"{path}: damaged (fold {fold}'s entry has no run_dir fold-{fold} or no metrics); {fix}")
        finished[fold] = entry
    return finished


def finished_folds(folder: Path) -> set[int]:
    """The folds ``cv_summary.json`` lists as finished (read strictly: a damaged summary is an error)."""
    folds = folds_of(folder)
    return set(read_summary(folder, folds, "continue the cross-validation with train.py -r " + str(folder)))


PARTITION_KEYS = ("seed", "data_loader")
"""What decides which samples a fold validates on: a fold's config must agree with ``cv.json`` on these."""


def check_fold(folder: Path, fold: int, folds: int, config: dict) -> None:
    """That ``folder/fold-{fold}`` is this CV's fold ``fold`` (its ``config.json`` and ``split.json``, when
    there, say the same partition as ``cv.json``): a run copied in from elsewhere, or a fold of a
    partition that ``cv.json`` no longer describes, is one line, never trained on or averaged in."""
    path = folder / f"fold-{fold}"
    fix = f"move {path} away to train fold {fold} again with train.py -r {folder}, or start a new cross-validation"
    if not path.is_dir():
        raise UserError(f"{path}: not a folder, not fold {fold} of the cross-validation in {folder}; {fix}")
    expected = {key: config.get(key) for key in PARTITION_KEYS}
    expected["data_loader"] = json.loads(json.dumps(expected["data_loader"]))
    expected["data_loader"].setdefault("args", {}).update(folds=folds, fold=fold)
    if os.path.lexists(path / "config.json"):
        own = read_config(latest_config(path), fix)
        differing = [key for key in PARTITION_KEYS if own.get(key) != expected[key]]
        if differing:
            args = own.get("data_loader", {}).get("args", {}) if isinstance(own.get("data_loader"), dict) else {}
            said = f"data_loader.args.folds {args.get('folds')!r}, fold {args.get('fold')!r}" if isinstance(args, dict) else "no data_loader.args"
            if isinstance(args, dict) and isinstance(args.get("folds"), int) and args["folds"] != folds:
                fix = f'put back "folds": {args["folds"]} in {folder / CV_FILE}, or start a new cross-validation with --folds {folds}'
            raise UserError(
                f"{path}: not fold {fold} of {folds} of the cross-validation in {folder} "
                f"(its {differing[0]} differs from {CV_FILE}'s; {said}); {fix}"
            )
    if os.path.lexists(path / "split.json"):
        split = read_json(path / "split.json", "fold's split", fix)
        if split.get("folds") != folds or split.get("fold") != fold:
            raise UserError(
                f"{path / 'split.json'}: fold {split.get('fold')!r} of {split.get('folds')!r}, not fold {fold} of {folds} ({CV_FILE}); {fix}"
            )


def check_folds(folder: Path, folds: int, config: dict) -> None:
    """:func:`check_fold` for every fold folder there, and no fold folder beyond ``folds``."""
    for path in sorted(folder.glob("fold-*")):
        number = path.name[len("fold-") :]
        if not number.isdigit() or number != str(int(number)) or int(number) >= folds:
            raise UserError(
                f"{path}: {CV_FILE} has {folds} folds (0 to {folds - 1}), so this is no fold of it; "
                f"move it away (or put back the number of folds in {folder / CV_FILE}), or start a new cross-validation"
            )
        check_fold(folder, int(number), folds, config)


@dataclass
class CrossValidation:
    """A K-fold cross-validation as one run directory: trains fold after fold as ordinary runs, keeps
    ``cv.json`` and ``cv_summary.json``, and continues an unfinished one exactly."""

    folder: Path
    folds: int
    config: dict
    trusted: bool
    """``--trust-checkpoint``: the folds' checkpoints may name code outside the project."""
    config_trusted: bool = True
    """The config came from ``-c`` (code the user chose), not from a ``cv.json`` read back (data)."""
    claim: RunDirClaim | None = None
    after_fold: Callable[[int, dict | None], str | None] | None = None
    """Called on every rank after each finished fold with the summary so far (rank 0; None elsewhere);
    a returned reason ends the cross-validation there (a sweep's pruner), every rank the same."""
    ended_by: str | None = None
    hint: str | None = None
    """How to continue, when a driver (a sweep) runs this CV: its own command."""
    tracker_parent: dict | None = None
    """A driver's parent tracker run (a sweep's, ``logger.trackers.open_parent``) that the CV's own parent run links to."""
    folds_parent: dict | None = None
    """The CV's parent tracker run, opened when a fold first starts (rank 0): every fold's trackers link to it."""

    @classmethod
    def start(cls, request: TrainRequest, folds: Any, command: str) -> CrossValidation:
        """A new CV: its config checked, its run directory claimed (rank 0; ``request.run_dir`` when a
        driver names it) and described in ``cv.json``."""
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise UserError(f"--folds: must be a whole number of at least 2, got {folds!r}")
        if request.resume is not None:
            raise UserError("--folds: a cross-validation starts from a config (-c); to continue one, run train.py -r CV_RUN_DIR")
        config = config_of(request)
        if not request.trust_checkpoint:
            config.check_checkpoints_resumable()
        fold_config(config.to_dict(), folds, 0, str(request.config or request.config_source), True)  # the loader takes folds: said now, not at fold 0
        join_process_group(config["device"], request.devices)  # under torchrun, rank 0 alone claims the CV's directory
        claim, folder = None, None
        if distributed.is_main_process():
            claim = RunDirClaim.create(request.run_dir) if request.run_dir is not None else claim_new_run_dir(config, request.run_id)
            folder = claim.path
            description = {"folds": folds, "config": config.to_dict(), "trust_checkpoint": request.trust_checkpoint, "command": command}
            write_atomic(folder / CV_FILE, json.dumps(description, indent=2) + "\n", "run directory", "make it writable")
        folder = Path(distributed.broadcast_object(str(folder) if folder else None))
        return cls(folder, folds, config.to_dict(), request.trust_checkpoint, True, claim)

    @classmethod
    def open(cls, folder: Path, trust_checkpoint: bool, devices: str | None = None) -> CrossValidation:
        """A CV to continue: ``cv.json`` read strictly, the CV run directory locked (rank 0)."""
        data = read_description(folder, "it is not a cross-validation this code can continue")
        folds, config = data["folds"], data["config"]
        join_process_group(config.get("device", "auto"), devices)
        claim = RunDirClaim.open(folder) if distributed.is_main_process() else None
        # cv.json is data, as a checkpoint is: its "trust_checkpoint" is never trust itself; the
        # resume command the CV printed repeats --trust-checkpoint when the CV was started with it.
        return cls(folder, folds, config, trust_checkpoint, trust_checkpoint, claim)

    def resume_command(self) -> str:
        if self.hint is not None:
            return self.hint
        return f"{launcher()} train.py -r {self.folder}" + (" --trust-checkpoint" if self.trusted else "")

    def done(self) -> dict[int, dict]:
        """The folds ``cv_summary.json`` says are finished, by number (read strictly, :func:`read_summary`)."""
        return read_summary(self.folder, self.folds, "repair it, or remove it to train its folds again")

    def left(self) -> dict[int, dict]:
        """The finished folds, once every fold folder is checked to be this CV's (:func:`check_folds`):
        a fold the summary lists whose folder is gone is trained again; one without a checkpoint is one line."""
        finished = self.done()  # first: a summary made for another fold count says which cv.json to put back
        check_folds(self.folder, self.folds, self.config)
        for fold in sorted(finished):
            path = self.folder / f"fold-{fold}"
            if not os.path.lexists(path):
                get_logger().info("fold %d: %s lists it as finished, but %s is gone; it is trained again", fold, SUMMARY, path.name)
                del finished[fold]
            elif fold_checkpoint(path, ("best", "last")) is None:
                raise UserError(
                    f"{path}: {SUMMARY} lists fold {fold} as finished, but it holds no checkpoint; "
                    f"move {path} away to train the fold again with train.py -r {self.folder}"
                )
        return finished

    def run(self, stop: StopRequest) -> int:
        """Train the folds not done yet, one after another; 0, or the exit code of a fold that stopped.
        The CV's parent tracker run, once a fold opened it, then records how the CV ended."""
        state = "failed"
        try:
            code = self.run_folds(stop)
            state = "finished" if code == 0 else "stopped"
            return code
        except (KeyboardInterrupt, StartupStopped):
            state = "stopped"
            raise
        finally:
            if self.folds_parent is not None:
                if not any(self.folder.glob("fold-*")):
                    state = "discarded"  # nothing was trained: a new CV's directory goes, and its parent run with it
                files = [path for path in (self.folder / CV_FILE, self.folder / SUMMARY) if path.exists()]
                close_parent(self.folds_parent, state, self.statistics(), files)

    def statistics(self) -> dict[str, float]:
        """The folds' statistics so far for the parent tracker run: ``val_loss_mean``, ``val_loss_std``, ..."""
        try:
            across = summarize(self.done())["across"]
        except UserError:
            return {}
        return {f"{name}_{stat}": value for name, stats in across.items() for stat, value in stats.items()}

    def run_folds(self, stop: StopRequest) -> int:
        """:meth:`run` without the parent tracker run's end."""
        finished = distributed.on_main(self.left)
        if len(finished) == self.folds:
            raise UserError(f"{self.folder}: all {self.folds} folds are finished ({SUMMARY}); nothing to train")
        for fold in range(self.folds):
            if fold in finished:
                continue
            stop.while_starting()  # while the fold starts, a signal stops it at once (its Session claims politely)
            code = self.run_fold(fold, stop)
            if code != 0:
                return code
            if distributed.is_main_process():
                finished[fold] = fold_result(self.folder / f"fold-{fold}", fold)
                self.write_summary(finished)
            if self.after_fold is not None and fold < self.folds - 1:
                reason = self.after_fold(fold, summarize(finished) if distributed.is_main_process() else None)
                if reason:
                    self.ended_by = reason
                    get_logger().info("cross-validation ends after fold %d: %s", fold, reason)
                    return 0
        if distributed.is_main_process():
            get_logger().info("cross-validation of %d folds: %s\n%s", self.folds, self.folder / SUMMARY, table(summarize(finished)))
            formats = self.config.get("trainer", {}).get("export")
            if formats:  # the fold ensemble, one module (app/export.py); the folds export nothing (fold_config)
                return export_cv_at_end(self.folder, self.folds, formats, self.trusted)
        return 0

    def run_fold(self, fold: int, stop: StopRequest) -> int:
        folder = self.folder / f"fold-{fold}"

        def fold_progress() -> tuple[Path | None, str | None]:
            last = latest_checkpoint(folder)
            return last, (training_end_reason(last) if last is not None else None)

        last, ended = distributed.broadcast_object(fold_progress() if distributed.is_main_process() else None)
        if ended is not None:  # trained to its end by a process killed before the summary said so
            get_logger().info("fold %d of %d: trained (%s) before the cross-validation stopped; read from %s", fold, self.folds, ended, folder)
            return 0
        if self.folds_parent is None and distributed.is_main_process():
            self.folds_parent = open_parent("cv", self.folder, self.config, parent=self.tracker_parent)
        common = {"trust_checkpoint": self.trusted, "resume_hint": self.resume_command(), "tracker_parent": self.folds_parent}
        if last is not None:
            request = TrainRequest(resume=str(last), command=self.resume_command(), **common)
        else:
            source = f"{self.folder / CV_FILE} (fold {fold} of {self.folds})"
            data = fold_config(self.config, self.folds, fold, source, self.config_trusted)
            request = TrainRequest(
                config_data=data,
                config_source=source,
                config_trusted=self.config_trusted,
                run_dir=folder,
                command=self.resume_command(),
                **common,
            )
        get_logger().info("fold %d of %d: %s", fold, self.folds, "resuming " + str(last) if last else "starting")
        return Session(request, stop).run_or_abandon()

    def write_summary(self, finished: dict[int, dict]) -> None:
        summary = summarize(finished)
        summary["folds"] = self.folds
        write_atomic(self.folder / SUMMARY, json.dumps(summary, indent=2) + "\n", "run directory", "make it writable")


def join_process_group(device: object, devices: str | None) -> None:
    """Under torchrun, join the process group before anything is claimed (each fold's Session
    finds it joined); a plain ``python train.py`` has none."""
    limit_visible_gpus(devices)
    distributed.init_distributed(select_device(device, distributed.launched_by_torchrun(), distributed.local_rank()))


def fold_config(config: dict, folds: int, fold: int, source: str, trusted: bool) -> dict:
    """The CV's config for fold ``fold``: its data loader makes fold ``fold`` of ``folds`` the validation set."""
    data = json.loads(json.dumps(config))
    args = data["data_loader"].setdefault("args", {})
    if args.get("folds") not in (None, folds):  # a fold of its own (fold) is what the CV replaces; another count is a contradiction
        raise UserError(f"--folds {folds}: the config's data_loader.args.folds is {args['folds']!r}; remove it from the config (a cross-validation sets it) or pass --folds {args['folds']!r}")
    args.update(folds=folds, fold=fold)
    if isinstance(data.get("trainer"), dict):
        data["trainer"].pop("export", None)  # the CV exports its fold ensemble when every fold is done, not each fold
    from app.config.names import resolve_type
    from app.config.overrides import parameters

    takes = parameters(resolve_type("data_loader", data["data_loader"]["type"], source, trusted))
    if takes is not None and not {"folds", "fold"} <= takes:
        raise UserError(
            f"--folds: {data['data_loader']['type']} takes no folds/fold arguments; subclass BaseDataLoader (a map-style data set) to cross-validate"
        )
    return data


def fold_checkpoint(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` (``best``, ``last``) that the fold's checkpoint store holds, or None."""
    return next((path for name in names if (path := find_checkpoint(folder / CHECKPOINTS, name)) is not None), None)


def latest_checkpoint(folder: Path) -> Path | None:
    """A fold's ``last`` checkpoint to resume, or None (a fold folder without one is removed: nothing in it is worth keeping)."""
    if not folder.exists():
        return None
    last = fold_checkpoint(folder, ("last",))
    if last is not None:
        return last
    if lock_holder(folder) is None:
        shutil.rmtree(folder, ignore_errors=True)
    return None


def fold_result(folder: Path, fold: int) -> dict:
    """The fold's best epoch (by its monitor; the last when it monitors nothing) and its validation values there."""
    record = read_run(folder)
    best = best_row(record.rows, record.monitor)
    if best is None:
        raise UserError(f"{folder}: the fold finished without an epoch in metrics.jsonl; remove the folder to train the fold again")
    values = {key: value for key, value in best.items() if key.startswith("val_")}
    return {"fold": fold, "run_dir": folder.name, "best_epoch": best["epoch"], "monitor": record.monitor, "metrics": values}


def summarize(finished: dict[int, dict]) -> dict:
    """Per fold and across folds (mean, std with ddof=0, min, max of every numeric validation value)."""
    per_fold = [finished[fold] for fold in sorted(finished)]
    names = [key for key, value in per_fold[0]["metrics"].items() if isinstance(value, (int, float))] if per_fold else []
    across = {}
    for name in names:
        values = [entry["metrics"][name] for entry in per_fold if isinstance(entry["metrics"].get(name), (int, float))]
        if values:
            across[name] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "min": min(values), "max": max(values)}
    return {"per_fold": per_fold, "across": across}


def table(summary: dict) -> str:
    """The summary as a console table: a row per fold, then mean and standard deviation."""
    names = list(summary["across"])
    lines = ["  " + f"{'fold':>6} {'epoch':>6} " + " ".join(f"{name:>14}" for name in names)]
    for entry in summary["per_fold"]:
        values = " ".join(f"{entry['metrics'].get(name, float('nan')):14.6g}" for name in names)
        lines.append(f"  {entry['fold']:>6} {entry['best_epoch']:>6} {values}")
    lines.append(f"  {'mean':>6} {'':>6} " + " ".join(f"{summary['across'][name]['mean']:14.6g}" for name in names))
    lines.append(f"  {'std':>6} {'':>6} " + " ".join(f"{summary['across'][name]['std']:14.6g}" for name in names))
    return "\n".join(lines)


def cross_validate(request: TrainRequest, folds: int | None, stop: StopRequest) -> int:
    """``train.py -c CONFIG --folds K`` (a new CV) or ``train.py -r CV_RUN_DIR`` (continue one); the exit code."""
    if folds is not None:
        cv = CrossValidation.start(request, folds, request.command)
    else:
        cv = CrossValidation.open(Path(request.resume), request.trust_checkpoint, request.devices)
    return run_cross_validation(cv, stop, new=folds is not None)


def run_cross_validation(cv: CrossValidation, stop: StopRequest, new: bool) -> int:
    """Train ``cv``'s folds left; a new CV's directory goes again if no fold was started (as a single run's would)."""
    verbosity = cv.config.get("trainer", {}).get("verbosity", 1)
    setup_logging(verbosity if verbosity in (0, 1, 2) else 1, int(os.environ.get("RANK", 0)))
    stop.while_running()
    try:
        if distributed.is_main_process():
            get_logger().info("cross-validation: %d folds in %s; continue with: %s", cv.folds, cv.folder, cv.resume_command())
        code = cv.run(stop)
    except BaseException:
        if new and cv.claim is not None and not any(cv.folder.glob("fold-*")):
            cv.claim.discard()  # nothing was trained: the new CV run directory goes, as a single run's would
        raise
    finally:
        if cv.claim is not None:
            cv.claim.release()
    if code != 0 and new and cv.claim is not None and not any(cv.folder.glob("fold-*")):
        cv.claim.discard()
    return code
