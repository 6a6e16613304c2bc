"""Experiment trackers (issue "MLflow and W&B beside TensorBoard, resumed with the run, never able to kill it").

Real libraries, no account, no network: MLflow on its default SQLite store (one shared by the
runs of this module, so its tables are made once), W&B offline, read back from the
``run-<id>.wandb`` files it writes (:func:`wandb_history`). The runs are in-process and tiny.
A run that SIGTERM stops and ``-r`` resumes is one MLflow run (and one W&B id) holding each
epoch once, equal to ``metrics.jsonl``; a fine-tune is a new tracker run naming its source; the
folds of a cross-validation are children of its parent run. Faults a tracker meets (a server
that cannot be reached or never answers, a store it cannot write, its run deleted under it, a
library that is not installed) are at most one warning line, and the run ends as it would have.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TESTS_ENV, metric_rows, tiny_config, write_config

import train
from app.run_records import find_run_dirs
from logger.logger import close_log_files

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # MLflow's use of SQLAlchemy

MLFLOW_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
"""A test's unreachable server fails at once (the template's own defaults retry twice, a second apart)."""


@pytest.fixture(scope="module")
def area(tmp_path_factory) -> Path:
    """The module's folder: ``saved/`` (one MLflow store for all runs), W&B's own cache and settings folders."""
    folder = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_API_KEY"):
            patch.delenv(name, raising=False)
        for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
            patch.setenv(name, str(folder / name.lower()))
        patch.chdir(folder)  # nothing may land in the current directory (./mlruns, ./wandb)
        yield folder


def config_for(area: Path, name: str, trackers: list[str], **trainer) -> dict:
    config = tiny_config(area, **{"epochs": 2, "limit_batches": 2, "log_step": 1, **trainer})
    config["name"] = name
    config["logger"] = {"trackers": trackers}
    return config


def run_train(argv: list, env: dict | None = None) -> tuple[int, str]:
    """``train.main(argv)`` in-process: (exit code, what it logged on the console)."""
    env = env or {}
    before = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = train.main([str(arg) for arg in argv])
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        close_log_files()
    return code, out.getvalue()


def warnings_in(console: str) -> list[str]:
    """The console's warning lines, but for the one saying how to resume a stopped run."""
    return [line for line in console.splitlines() if " WARNING " in line and " WARNING stopped by " not in line]


def client(area: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{area / 'saved' / 'mlflow.db'}")


def runs_of(area: Path, experiment: str) -> list:
    found = client(area).get_experiment_by_name(experiment)
    return client(area).search_runs([found.experiment_id]) if found else []


def history(area: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(area).get_metric_history(run_id, key))


def expected_params(config: dict) -> dict[str, str]:
    """The resolved config flattened by dotted keys; strings as they are, other values as JSON."""
    out = {}

    def walk(value, prefix):
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = value if isinstance(value, str) else json.dumps(value)

    walk(config, "")
    return out


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file: W&B's LevelDB-style log (a 7-byte header, 32 KiB blocks, each
    record a CRC, a length and a type: whole, first, middle or last piece) of protobuf ``Record``s."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pieces, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            pieces = chunk
        elif kind in (3, 4):
            pieces += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
    return records


def wandb_runs(run_dir: Path) -> list[Path]:
    """The run's offline W&B folders, oldest first (a resume adds one with the same id)."""
    return sorted(Path(p) for p in glob.glob(str(run_dir / "wandb" / "offline-run-*")))


def wandb_history(run_dir: Path) -> list[dict]:
    """Every history row W&B holds for the run, across its offline folders."""
    rows = []
    for folder in wandb_runs(run_dir):
        for record in wandb_records(next(folder.glob("run-*.wandb"))):
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def wandb_record_of(run_dir: Path, kind: str) -> list:
    return [r for folder in wandb_runs(run_dir) for r in wandb_records(next(folder.glob("run-*.wandb"))) if r.WhichOneof("record_type") == kind]


# -- a run stopped by SIGTERM mid-epoch and resumed: one tracker run, each epoch once ---------------------


@pytest.fixture(scope="module")
def resumed(area) -> dict:
    """``tracked``: 3 epochs with MLflow and W&B, stopped by a real SIGTERM in epoch 2, then ``-r last.pth``."""
    config = config_for(area, "tracked", ["tensorboard", "mlflow", "wandb"], epochs=3)
    config["arch"]["type"] = "fault_injection:SignalingDigitsCNN"
    path = write_config(area, config, "tracked.json")
    code, first = run_train(["-c", path, "--run-id", "run", "--trust-checkpoint"], {"SIGNAL_AT_BATCH": "4", "SIGNAL_NAME": "SIGTERM"})
    assert code == 128 + signal.SIGTERM, first
    run_dir = area / "saved" / "tracked" / "run"
    stopped = {"trackers": json.loads((run_dir / "trackers.json").read_text()), "rows": metric_rows(run_dir)}
    code, second = run_train(["-r", run_dir / "checkpoints" / "last.pth", "--trust-checkpoint"])
    assert code == 0, second
    return {"run_dir": run_dir, "consoles": [first, second], "stopped": stopped}


def test_a_stopped_and_resumed_run_is_one_mlflow_run_equal_to_metrics_jsonl(area, resumed):
    run_dir = resumed["run_dir"]
    assert [row["epoch"] for row in resumed["stopped"]["rows"]] == [1]  # stopped in epoch 2
    runs = runs_of(area, "tracked")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params == expected_params(json.loads((run_dir / "config.json").read_text()))
    rows = metric_rows(run_dir)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for key in [k for k, v in rows[0].items() if isinstance(v, (int, float))]:
        assert history(area, run.info.run_id, key) == [(row["epoch"], row[key]) for row in rows], key
    steps = history(area, run.info.run_id, "train/step_loss")
    assert [step for step, _ in steps] == list(range(1, 7))  # 2 steps an epoch, each once


def test_tags_artifacts_and_ids_name_the_run(area, resumed):
    run_dir = resumed["run_dir"]
    run = runs_of(area, "tracked")[0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    tags = run.data.tags
    assert tags["run_dir"] == str(run_dir) and tags["mode"] == "new" and tags["resumes"] == "1"
    assert tags["command"] == manifest["resumes"][-1]["command"]
    if manifest["git"]:
        assert tags["git_commit"].split()[0] == manifest["git"]["commit"]
    assert tags["best_checkpoint"] == str(run_dir / "checkpoints" / "best.pth")
    artifacts = {item.path for item in client(area).list_artifacts(run.info.run_id)}
    assert {"config.json", "manifest.json", "metrics.jsonl"} <= artifacts and "checkpoints" not in artifacts  # log_checkpoints is off
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(area / "saved")
    assert not (area / "mlruns").exists() and not (area / "wandb").exists()
    assert run_dir in find_run_dirs(area / "saved") and not [p for p in find_run_dirs(area / "saved") if "mlartifacts" in p.parts]  # runs.py
    kept = json.loads((run_dir / "trackers.json").read_text())
    assert kept["mlflow"]["run_id"] == resumed["stopped"]["trackers"]["mlflow"]["run_id"] == run.info.run_id
    assert kept["mlflow"]["epoch"] == 3 and kept["mlflow"]["step"] == 6
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert checkpoint["trackers"]["mlflow"]["run_id"] == run.info.run_id
    assert checkpoint["trackers"]["wandb"]["id"] == kept["wandb"]["id"]
    for console in resumed["consoles"]:
        assert warnings_in(console) == []


def test_wandb_offline_folders_hold_each_epoch_once(resumed):
    run_dir = resumed["run_dir"]
    folders = wandb_runs(run_dir)
    wandb_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"]
    assert len(folders) == 2 and all(folder.name.endswith(f"-{wandb_id}") for folder in folders)  # the resume continues the id
    epochs = [row for row in wandb_history(run_dir) if "epoch" in row]
    rows = metric_rows(run_dir)
    assert [row["epoch"] for row in epochs] == [1, 2, 3]
    assert [row["val_loss"] for row in epochs] == [row["val_loss"] for row in rows]
    steps = [row["train/global_step"] for row in wandb_history(run_dir) if "train/global_step" in row]
    assert steps == list(range(1, 7))
    saved = {f.path for record in wandb_record_of(run_dir, "files") for f in record.files.files}
    assert {"config.json", "manifest.json", "metrics.jsonl"} <= saved
    config = {item.key: json.loads(item.value_json) for record in wandb_record_of(run_dir, "config") for item in record.config.update}
    assert config["trainer"]["epochs"] == 3 and config["logger"]["trackers"] == ["tensorboard", "mlflow", "wandb"]


# -- a fine-tune and a cross-validation: linked tracker runs --------------------------------------------------


def test_a_resume_while_the_store_is_down_keeps_the_run_and_the_next_resume_continues_it(area):
    """The resumed session cannot reach its MLflow run: trackers.json and the checkpoint keep its id,
    and once the store is back (and with trackers.json damaged) the next resume continues it."""
    from mlflow.tracking import MlflowClient

    config = config_for(area, "outage", ["mlflow"], epochs=1)
    config["trainer"]["save_dir"] = str(area / "outage")
    code, console = run_train(["-c", write_config(area, config, "outage.json"), "--run-id", "run"])
    assert code == 0, console
    run_dir, store = area / "outage" / "outage" / "run", area / "outage" / "mlflow.db"
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"]
    store.rename(store.with_suffix(".away"))
    store.mkdir()  # the store cannot be opened: a server that is down
    code, console = run_train(["-r", run_dir / "checkpoints" / "last.pth", "trainer.epochs=2"])
    assert code == 0 and len(warnings_in(console)) == 1 and "mlflow tracker" in warnings_in(console)[0], console
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run_id
    assert torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["trackers"]["mlflow"]["run_id"] == run_id
    store.rmdir()
    store.with_suffix(".away").rename(store)
    record = json.loads((run_dir / "trackers.json").read_text())
    record["mlflow"]["epoch"] = "two"  # damaged: the checkpoint's copy is used
    (run_dir / "trackers.json").write_text(json.dumps(record))
    code, console = run_train(["-r", run_dir / "checkpoints" / "last.pth", "trainer.epochs=3"])
    assert code == 0 and [w for w in warnings_in(console) if "trackers.json" not in w] == [], console
    runs = MlflowClient(tracking_uri=f"sqlite:///{store}").search_runs([MlflowClient(tracking_uri=f"sqlite:///{store}").get_experiment_by_name("outage").experiment_id])
    assert [run.info.run_id for run in runs] == [run_id]
    losses = MlflowClient(tracking_uri=f"sqlite:///{store}").get_metric_history(run_id, "val_loss")
    assert sorted(m.step for m in losses) == [1, 2, 3] and [row["epoch"] for row in metric_rows(run_dir)] == [1, 2, 3]


def test_a_fine_tune_is_a_new_tracker_run_naming_its_source(area, resumed):
    source = runs_of(area, "tracked")[0]
    config = config_for(area, "tracked", ["tensorboard", "mlflow", "wandb"], epochs=1)
    code, console = run_train(["-r", resumed["run_dir"] / "checkpoints" / "best.pth", "-c", write_config(area, config, "tune.json"), "--run-id", "tuned"])
    assert code == 0, console
    tuned = [run for run in runs_of(area, "tracked") if run.data.tags["run_dir"].endswith("/tuned")]
    assert len(tuned) == 1 and tuned[0].info.run_id != source.info.run_id
    assert tuned[0].data.tags["finetuned_from"] == source.info.run_id
    assert tuned[0].data.tags["mode"] == "finetune"
    summary = wandb_record_of(area / "saved" / "tracked" / "tuned", "summary")
    facts = {item.key: json.loads(item.value_json) for record in summary for item in record.summary.update}
    source_id = json.loads((resumed["run_dir"] / "trackers.json").read_text())["wandb"]["id"]
    assert facts["finetuned_from"].endswith(f"tracked/{source_id}")


def test_cross_validation_folds_are_children_of_its_parent_run(area):
    config = config_for(area, "folded", ["mlflow", "wandb"], epochs=1)
    code, console = run_train(["-c", write_config(area, config, "cv.json"), "--folds", "2", "--run-id", "cv"])
    assert code == 0, console
    runs = runs_of(area, "folded")
    parents = [run for run in runs if run.data.tags.get("kind") == "cv"]
    assert len(parents) == 1 and len(runs) == 3
    parent = parents[0]
    children = [run for run in runs if run is not parent]
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert sorted(run.info.run_name for run in children) == ["fold-0", "fold-1"]
    assert parent.info.status == "FINISHED"
    summary = json.loads((area / "saved" / "folded" / "cv" / "cv_summary.json").read_text())
    assert parent.data.metrics["val_loss_mean"] == summary["across"]["val_loss"]["mean"]
    groups = {wandb_record_of(area / "saved" / "folded" / "cv" / f"fold-{i}", "run")[0].run.run_group for i in (0, 1)}
    assert groups == {"folded/cv"}
    assert not (area / "saved" / "folded" / "cv" / "fold-0" / "events.out.tfevents").exists()
    assert not list((area / "saved" / "folded" / "cv" / "fold-0").glob("events.out.tfevents.*"))  # tensorboard is not listed
    assert warnings_in(console) == []


def test_sweep_trials_are_children_of_one_parent_per_study(area):
    import sweep

    config = config_for(area, "swept", ["mlflow"], epochs=1)
    space = area / "swept_space.yaml"
    space.write_text("trials: 3\nsampler: {type: grid}\nparams:\n  optimizer.args.lr: {choices: [0.01, 0.001, 0.0001]}\n")
    argv = ["-c", str(write_config(area, config, "swept.json")), "--space", str(space)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = sweep.main(argv)
    close_log_files()
    assert code == 0, out.getvalue()
    runs = runs_of(area, "swept")
    parents = [run for run in runs if run.data.tags.get("kind") == "sweep"]
    assert len(parents) == 1 and len(runs) == 4, [run.data.tags for run in runs]
    parent = parents[0]
    children = [run for run in runs if run is not parent]
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert sorted(run.info.run_name for run in children) == ["trial-0000", "trial-0001", "trial-0002"]
    assert sorted(float(run.data.params["optimizer.args.lr"]) for run in children) == [0.0001, 0.001, 0.01]
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 3
    best = json.loads((area / "saved" / "swept" / "sweeps" / "swept_space" / "best.json").read_text())
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best["value"])
    assert warnings_in(out.getvalue()) == []


# -- faults: a tracker never ends a run ------------------------------------------------------------------------


def test_an_unreachable_tracking_server_is_one_warning_and_the_run_finishes(area):
    config = config_for(area, "unreachable", ["mlflow"])
    config["logger"]["mlflow"] = {"tracking_uri": "http://127.0.0.1:9"}
    started = time.monotonic()
    code, console = run_train(["-c", write_config(area, config, "unreachable.json"), "--run-id", "run"], MLFLOW_FAST)
    assert code == 0, console
    assert time.monotonic() - started < 20
    run_dir = area / "saved" / "unreachable" / "run"
    assert [row["epoch"] for row in metric_rows(run_dir)] == [1, 2] and (run_dir / "checkpoints" / "best.pth").exists()
    warned = warnings_in(console)
    assert len(warned) == 1 and "mlflow tracker" in warned[0] and "training goes on" in warned[0], console
    assert json.loads((run_dir / "manifest.json").read_text())["ended"]["state"] == "finished"


def test_a_server_that_never_answers_is_left_behind_after_finish_timeout(area):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)  # connections are accepted by the kernel and never answered
    config = config_for(area, "hung", ["mlflow"])
    config["logger"].update(mlflow={"tracking_uri": f"http://127.0.0.1:{server.getsockname()[1]}"}, finish_timeout=1)
    started = time.monotonic()
    try:
        code, console = run_train(["-c", write_config(area, config, "hung.json"), "--run-id", "run"], {**MLFLOW_FAST, "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"})
        elapsed = time.monotonic() - started
    finally:
        server.close()  # the hung request fails now: its thread ends, and says so before this test does
        for thread in threading.enumerate():
            if thread.name == "mlflow-tracker":
                thread.join(30)
    assert code == 0, console
    assert elapsed < 20, elapsed
    assert any("still busy after logger.finish_timeout=1s" in line for line in warnings_in(console)), console
    assert [row["epoch"] for row in metric_rows(area / "saved" / "hung" / "run")] == [1, 2]


def test_a_store_that_cannot_be_created_is_one_warning(area):
    (area / "a_file").write_text("not a folder")
    config = config_for(area, "nostore", ["mlflow"])
    config["logger"]["mlflow"] = {"tracking_uri": f"sqlite:///{area / 'a_file' / 'mlflow.db'}"}
    code, console = run_train(["-c", write_config(area, config, "nostore.json"), "--run-id", "run"])
    assert code == 0, console
    warned = warnings_in(console)
    assert len(warned) == 1 and "mlflow tracker" in warned[0], console
    assert (area / "saved" / "nostore" / "run" / "checkpoints" / "last.pth").exists()


def test_a_run_deleted_in_the_store_mid_run_is_one_warning_and_training_goes_on(area):
    """The library raises at the second epoch (its run is gone): one warning; epochs, checkpoints and the exit code as without it."""
    config = config_for(area, "deleted", ["mlflow"], epochs=3)
    path = write_config(area, config, "deleted.json")
    argv = ["-c", str(path), "--run-id", "run"]
    run_dir = area / "saved" / "deleted" / "run"

    def delete_the_run(row: dict) -> None:
        if row["epoch"] == 1:
            client(area).delete_run(wait_for_mark(run_dir, "mlflow", 1)["run_id"])

    code, console = train_with_hook(argv, delete_the_run)
    assert code == 0, console
    assert [row["epoch"] for row in metric_rows(run_dir)] == [1, 2, 3]
    assert torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["progress"]["epoch"] == 3
    warned = warnings_in(console)
    assert len(warned) == 1 and "mlflow tracker" in warned[0] and "deleted" in warned[0].lower(), console


def train_with_hook(argv: list, hook) -> tuple[int, str]:
    """``train.py argv`` in-process as ``Session.run`` does it, with ``hook`` called after each epoch: (exit code, console)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        session = train.Session(train.request_of(train.parse_args(argv), argv), train.STOP.install())  # as train.main: no stop left pending
        try:
            session.prepare()
            session.training = True
            session.trainer.epoch_end.append(hook)
            session.trainer.train()
            code = session.outcome()
        finally:
            train.STOP.restore()
            close_log_files()
    return code, out.getvalue()


def wait_for_mark(run_dir: Path, tracker: str, epoch: int) -> dict:
    """``trackers.json``'s entry of ``tracker`` once it holds ``epoch`` (the tracker sends in the background)."""
    for _ in range(400):
        kept = json.loads((run_dir / "trackers.json").read_text()) if (run_dir / "trackers.json").exists() else {}
        if kept.get(tracker, {}).get("epoch", 0) >= epoch:
            return kept[tracker]
        time.sleep(0.025)
    raise AssertionError(f"{tracker} never held epoch {epoch}")


def test_the_wandb_service_killed_mid_run_is_one_warning_and_a_new_one_continues(area):
    """W&B's service process (``wandb-core``) is SIGKILLed after epoch 1: one warning, then a new service continues the run."""
    config = config_for(area, "wandbkill", ["wandb"], epochs=3)
    run_dir = area / "saved" / "wandbkill" / "run"

    def kill_the_service(row: dict) -> None:
        if row["epoch"] == 1:
            wait_for_mark(run_dir, "wandb", 1)
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError, IndexError):
                    fields = stat.read_text().rsplit(")", 1)
                    if fields[0].endswith("(wandb-core") and int(fields[1].split()[1]) == os.getpid():
                        os.kill(int(stat.parent.name), signal.SIGKILL)

    code, console = train_with_hook(["-c", str(write_config(area, config, "wandbkill.json")), "--run-id", "run"], kill_the_service)
    assert code == 0, console
    warned = warnings_in(console)
    assert len(warned) == 1 and "wandb tracker" in warned[0], console
    assert "wandb tracker: working again" in console
    epochs = [row["epoch"] for row in wandb_history(run_dir) if "epoch" in row]
    assert epochs[-2:] == [2, 3] and len(epochs) == len(set(epochs))  # what the killed service had not written is W&B's loss
    assert len(wandb_runs(run_dir)) == 2 and [row["epoch"] for row in metric_rows(run_dir)] == [1, 2, 3]


def test_a_tracker_that_is_not_installed_is_one_line_before_anything_is_written(area, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what Python does for a module that is not there: the import fails
    config = config_for(area, "missing", ["tensorboard", "wandb"])
    capsys.readouterr()
    code = train.main(["-c", str(write_config(area, config, "missing.json")), "--run-id", "run"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"error: {area / 'missing.json'}: logger.trackers: 'wandb' is not installed; install it with pip install -e '.[wandb]', "
        "or leave it out of logger.trackers"
    )
    assert not (area / "saved" / "missing").exists()


@pytest.mark.slow
def test_an_mlflow_store_in_a_read_only_folder_is_one_warning(tmp_path):
    from test_bad_inputs import read_only_runner

    preexec = read_only_runner()
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o555)
    config = config_for(tmp_path, "readonly", ["mlflow"])
    config["logger"]["mlflow"] = {"tracking_uri": f"sqlite:///{store / 'mlflow.db'}"}
    env = {**os.environ, **TESTS_ENV, "OMP_NUM_THREADS": "1", **MLFLOW_FAST}
    result = subprocess.run(
        [sys.executable, "train.py", "-c", str(write_config(tmp_path, config)), "--run-id", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec,
    )
    store.chmod(0o755)
    assert result.returncode == 0, result.stdout + result.stderr
    warned = warnings_in(result.stdout)
    assert len(warned) == 1 and "mlflow tracker" in warned[0], result.stdout + result.stderr
    assert [row["epoch"] for row in metric_rows(tmp_path / "saved" / "readonly" / "run")] == [1, 2]
    assert list(store.iterdir()) == []
