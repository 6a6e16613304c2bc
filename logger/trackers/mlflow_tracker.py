"""MLflow through its own client (``mlflow.tracking.MlflowClient``), imported only when a run names it.

One MLflow run per run directory, in the experiment ``logger.mlflow.experiment`` (default: the
config's ``name``) of the store ``logger.mlflow.tracking_uri`` (default: ``sqlite:///<save_dir>/mlflow.db``,
nothing to start; any server URI works the same). It holds the resolved config flattened as
params (``trainer.epochs``: ``2``; strings as they are, other values as JSON), every epoch row's
numbers as metrics at step = epoch, the step scalars at their optimizer step, tags (the run
directory, the command and git commit from the manifest, how it started), and at the end the run's
files as artifacts and the best checkpoint's path (its file with ``logger.log_checkpoints``).
Experiments this creates in a local store keep their artifacts beside it (``<save_dir>/mlartifacts``),
never in the current directory. A cross-validation's folds and a sweep's trials are children of
their parent run (tag ``mlflow.parentRunId``); a fine-tune names its source (tag ``finetuned_from``).

MLflow stores every value logged at a step, two values at one step included; exactly-once comes
from the marks (``tracker.py``), read back from the store on resume: the last step of ``epoch``
and of ``train/step_loss``. MLflow's HTTP client retries a failed request 7 times over minutes by
default; unless set, this lowers ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` to 2,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` to 1 and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` to 20 seconds,
since a failed send is tried again at the next epoch anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from logger.logger import get_logger
from logger.trackers.settings import TrackerSettings
from logger.trackers.tracker import STEP_KEYS, Tracker, numbers, safe_key
from utils.nested import flatten

HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED", "unknown": "KILLED"}
"""A session's end as an MLflow run status (a stopped run is set RUNNING again by its resume)."""
REMOTE = ("http", "https", "databricks", "databricks-uc", "uc")


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` (MLflow imported here, its HTTP retries bounded, its own log lines quiet)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    probe_sqlite(uri)
    from mlflow.tracking import MlflowClient

    # MLflow logs its retries and "Creating initial MLflow database tables..." itself; the worker says
    # what matters in one line, so only MLflow's errors stay.
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    return MlflowClient(tracking_uri=uri)


def probe_sqlite(uri: str) -> None:
    """Open a SQLite store's file first: MLflow retries a store it cannot open for about 100 seconds."""
    if not uri.startswith("sqlite:///") or uri == "sqlite:///:memory:":
        return
    path = Path(uri[len("sqlite:///") :].split("?")[0])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
    except (OSError, sqlite3.Error) as exc:
        raise RuntimeError(f"cannot open the store {path} ({exc})") from None


def artifact_location(uri: str, save_dir: Path) -> str | None:
    """Where an experiment this creates keeps its artifacts: beside a SQLite store, in the save dir
    for another database, the server's choice for a server (None)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme in REMOTE or scheme in ("", "file"):
        return None
    if scheme == "sqlite" and uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        return str(Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts")
    return str(save_dir / "mlartifacts")


def experiment_id(client: Any, name: str, uri: str, save_dir: Path) -> str:
    """The experiment called ``name`` (created when missing, restored when deleted)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri, save_dir))
        except MlflowException:
            found = client.get_experiment_by_name(name)  # another process created it meanwhile
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def params_of(config: dict) -> dict[str, str]:
    """The resolved config flattened: ``{"trainer.epochs": "2", "name": "digits_cnn", "metrics": "[...]"}``."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    params = {}
    for key, value in flatten(config).items():
        text = value if isinstance(value, str) else json.dumps(value)
        params[safe_key(key)] = text if len(text) <= MAX_PARAM_VAL_LENGTH else text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
    return params


def send_batch(client: Any, run_id: str, metrics: list = (), params: list = (), tags: list = ()) -> None:
    """``log_batch`` in pieces MLflow accepts (100 params or tags, 1000 entities per request)."""
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    for start in range(0, len(tags), 100):
        client.log_batch(run_id, tags=tags[start : start + 100])
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


class MlflowTracker(Tracker):
    """One run directory as one MLflow run: params, epoch metrics, tags and artifacts through MLflow's client;
    a resume continues the same run."""

    name = "mlflow"

    def __init__(self, settings: TrackerSettings, run, stored: dict | None = None):
        super().__init__(settings, run, stored)
        self.uri = settings.tracking_uri
        self.client: Any = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.described = False  # params and tags sent
        self.created = False  # a new run (a resume continues one: its params are there)

    def ids(self) -> dict:
        return {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id} if self.run_id else {}

    def open(self) -> None:
        if self.run_id is not None and self.described:
            return
        if self.client is None:
            self.client = mlflow_client(self.uri)
        from mlflow.entities import Param, RunTag

        if self.run_id is None and not self._reopen():
            self._create()
        if not self.described:
            facts = self.run.tags() if self.created else {k: v for k, v in self.run.tags().items() if k != "mode"}  # how it first started
            tags = [RunTag(safe_key(key), value) for key, value in facts.items()]
            params = [Param(key, value) for key, value in params_of(self.run.config).items()] if self.created else []
            send_batch(self.client, self.run_id, params=params, tags=tags)
            self.described = True

    def _reopen(self) -> bool:
        """A resume: the stored run, running again, with its marks read from the store. False when there is none to continue."""
        from mlflow.exceptions import MlflowException

        stored = self.stored if self.stored.get("tracking_uri") == self.uri else {}
        if self.run.mode != "resume" or not stored.get("run_id"):
            return False
        try:
            found = self.client.get_run(stored["run_id"])
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            found = None
        if found is None or found.info.lifecycle_stage != "active":
            get_logger().info("mlflow tracker: run %s is gone from %s; the resume starts a new one", stored["run_id"], self.uri)
            return False
        run_id = found.info.run_id
        self.client.update_run(run_id, status="RUNNING")
        epoch = max((int(m.step) for m in self.client.get_metric_history(run_id, "epoch")), default=0)
        step = max((int(m.step) for m in self.client.get_metric_history(run_id, STEP_KEYS[0])), default=0)
        # Open only once the marks are known: a try that fails before then finds the run again next time.
        self.epoch, self.step = epoch, step
        self.run_id, self.experiment_id = run_id, found.info.experiment_id
        return True

    def _create(self) -> None:
        parent, source = self.parent_entry(), self.source_entry()
        same_store = parent.get("tracking_uri") == self.uri and parent.get("run_id")
        self.experiment_id = parent["experiment_id"] if same_store else experiment_id(self.client, self.settings.mlflow_experiment, self.uri, self.settings.save_dir)
        tags = {"mlflow.parentRunId": parent["run_id"]} if same_store else {}
        if source.get("run_id"):
            tags["finetuned_from"] = source["run_id"] + ("" if source.get("tracking_uri") == self.uri else f" ({source.get('tracking_uri')})")
        run = self.client.create_run(self.experiment_id, run_name=self.run.run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        self.created = True
        self.epoch = self.step = 0

    def send_epoch(self, row: dict, when: float) -> None:
        from mlflow.entities import Metric

        stamp, epoch = int(when * 1000), int(row["epoch"])
        metrics = [Metric(safe_key(key), value, stamp, epoch) for key, value in numbers(row).items()]
        send_batch(self.client, self.run_id, metrics=metrics)

    def send_steps(self, items: list[tuple[dict, int, float]]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(safe_key(key), value, int(when * 1000), step) for values, step, when in items for key, value in numbers(values).items()]
        send_batch(self.client, self.run_id, metrics=metrics)

    def finish(self, state: str, files: list[Path], best: Path | None) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        if best is not None:
            self.client.set_tag(self.run_id, "best_checkpoint", str(best))
            if self.settings.log_checkpoints:
                if best.is_dir():
                    self.client.log_artifacts(self.run_id, str(best), f"checkpoints/{best.name}")
                else:
                    self.client.log_artifact(self.run_id, str(best), "checkpoints")
        self.client.set_terminated(self.run_id, STATUS.get(state, "KILLED"))

    def discard(self) -> None:
        self.client.delete_run(self.run_id)
