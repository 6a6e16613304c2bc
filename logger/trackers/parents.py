"""Parent tracker runs for runs of runs: a cross-validation's folds, a sweep's trials.

``parent = open_parent("cv", folder, config)`` creates the parent (or finds it again: a
cross-validation or sweep that is continued, another worker process of the same sweep) and
returns plain data to put on each child's ``TrainRequest.tracker_parent``; each child's trackers
then link to it: in MLflow the child run gets the tag ``mlflow.parentRunId`` (and is created in
the parent's experiment), in W&B the child joins the parent's ``group`` (``job_type`` ``fold`` or
``trial``). ``close_parent(parent, "finished", metrics)`` records the end (and, say, the
cross-validation's mean and standard deviation as the parent's metrics).

The parent's ids are kept in ``folder/trackers.json`` (under ``parent``), written under a lock, so
processes sharing the folder share one parent; MLflow's parent run also carries the tag
``parent_key`` (the folder's path, or ``key``: a study name for workers that share no disk), by
which a process without the file finds it. Neither call ever raises: a tracker that cannot be
reached is one warning line, and the children then run unlinked. Each waits at most
``logger.finish_timeout`` seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from logger.logger import get_logger
from logger.trackers.hub import RECORD, read_record
from logger.trackers.settings import TrackerSettings, missing_extras
from logger.trackers.tracker import describe
from utils.errors import UserError
from utils.files import FileLock, write_atomic

PARENT_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


def open_parent(kind: str, folder: str | Path, config: dict, key: str | None = None, parent: dict | None = None) -> dict | None:
    """The parent tracker run of the runs made in ``folder`` (``kind``: ``"cv"`` or ``"sweep"``), for
    ``TrainRequest.tracker_parent``; None when ``config`` names no tracker besides TensorBoard.

    ``parent``: a parent of this parent (a sweep's, when a trial is a cross-validation): in MLflow
    this run is its child, in W&B the children stay in its group."""
    settings = TrackerSettings.from_config(config)
    names = [name for name in settings.names if name not in missing_extras([name])]
    if not names:
        return None
    folder = Path(folder).resolve()
    outer = parent or {}
    this: dict[str, Any] = {
        "kind": kind,
        "key": key or str(folder),
        "folder": str(folder),
        "name": f"{settings.experiment}/{folder.name}",
        "finish_timeout": settings.finish_timeout,
    }
    with _locked(folder):
        stored = read_record(folder)[0].get("parent") or {}
        if "wandb" in names:
            group = (outer.get("wandb") or {}).get("group") or (stored.get("wandb") or {}).get("group") or this["name"]
            this["wandb"] = {"group": group}
        if "mlflow" in names:
            link = outer.get("mlflow") or {}
            found = _bounded(lambda: _mlflow_parent(settings, this, config, stored.get("mlflow") or {}, link), settings.finish_timeout, "open")
            if found:
                this["mlflow"] = found
        try:
            write_atomic(folder / RECORD, json.dumps({**read_record(folder)[0], "parent": this}, indent=2) + "\n", "run directory", "make it writable")
        except Exception as exc:  # noqa: BLE001 - the parent works without its record; a continued one then makes a new one
            get_logger().warning("could not write %s (%s)", folder / RECORD, describe(exc))
    return this


def close_parent(parent: dict | None, state: str = "finished", metrics: dict | None = None, files: list[Path] = ()) -> None:
    """The end of the runs of runs: ``state`` ``finished``, ``stopped`` or ``failed`` (``discarded``:
    the parent is deleted, nothing was trained); ``metrics`` (numbers) and ``files`` go to the parent."""
    entry = (parent or {}).get("mlflow")
    if not entry:
        return
    timeout = float(parent.get("finish_timeout", 60.0))

    def close() -> None:
        from logger.trackers.mlflow_tracker import mlflow_client, send_batch

        client = mlflow_client(entry["tracking_uri"])
        if state == "discarded":
            client.delete_run(entry["run_id"])
            return
        if metrics:
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            values = [Metric(name, float(value), stamp, 0) for name, value in metrics.items() if isinstance(value, (int, float))]
            send_batch(client, entry["run_id"], metrics=values)
        for path in files:
            client.log_artifact(entry["run_id"], str(path))
        client.set_terminated(entry["run_id"], PARENT_STATUS.get(state, "KILLED"))

    _bounded(close, timeout, "close")


def _mlflow_parent(settings: TrackerSettings, parent: dict, config: dict, stored: dict, link: dict) -> dict:
    from logger.trackers.mlflow_tracker import experiment_id, mlflow_client, params_of, send_batch

    uri = settings.tracking_uri
    client = mlflow_client(uri)
    run = None
    if stored.get("tracking_uri") == uri and stored.get("run_id"):
        try:
            run = client.get_run(stored["run_id"])
        except Exception:  # noqa: BLE001 - gone from the store: a new parent
            run = None
    if run is None or run.info.lifecycle_stage != "active":
        exp = experiment_id(client, settings.mlflow_experiment, uri, settings.save_dir)
        found = client.search_runs([exp], filter_string=f"tags.parent_key = '{_quoted(parent['key'])}'", max_results=1)
        run = found[0] if found else None
    if run is None:
        from mlflow.entities import Param

        tags = {"parent_key": parent["key"], "kind": parent["kind"], "run_dir": parent["folder"]}
        if link.get("tracking_uri") == uri and link.get("run_id"):
            tags["mlflow.parentRunId"] = link["run_id"]
        run = client.create_run(exp, run_name=parent["name"].rsplit("/", 1)[-1], tags=tags)
        send_batch(client, run.info.run_id, params=[Param(k, v) for k, v in params_of(config).items()])
    else:
        client.update_run(run.info.run_id, status="RUNNING")
    return {"tracking_uri": uri, "experiment_id": run.info.experiment_id, "run_id": run.info.run_id}


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _bounded(action: Callable[[], Any], timeout: float, what: str) -> Any:
    """``action()`` in a daemon thread, waited for at most ``timeout`` seconds; its result, or None
    (a failure or a timeout is one warning)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = action()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a tracker never ends a run
            result["error"] = describe(exc)

    thread = threading.Thread(target=run, name=f"mlflow-parent-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        get_logger().warning("mlflow tracker: the parent run did not %s within logger.finish_timeout=%gs; the runs go on without it", what, timeout)
    elif "error" in result:
        get_logger().warning("mlflow tracker: could not %s the parent run (%s); the runs go on without it", what, result["error"])
    return result.get("value")


class _locked:
    """An exclusive lock on ``folder/.trackers.lock`` (processes sharing the folder make one parent); no lock if it cannot be made."""

    def __init__(self, folder: Path):
        self.lock = FileLock(folder / ".trackers.lock", wait=True)

    def __enter__(self) -> _locked:
        try:
            self.lock.acquire()
        except (OSError, UserError):  # a link in its place (utils.files.open_own) is not followed either
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
