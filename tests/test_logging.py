"""Logging and visualisation: train.log, console lines and bars, metrics.jsonl and TensorBoard events,
read back with TensorBoard's own EventAccumulator, across a resume."""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, run_here, tiny_config, write_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from app.run_dir import RunDirClaim
from logger import MetricsFile, TensorboardWriter, add_log_file, close_log_files, get_logger, setup_logging
from logger.run_log import RunRecorder
from utils.errors import UserError

THREADS = {"OMP_NUM_THREADS": "1"}  # the test machine's cores are shared; one thread avoids oversubscription
EPOCH_TAGS = {
    "epoch",
    "train/loss",
    "train/accuracy",
    "train/top_k_acc",
    "train/f1",
    "train/auroc",
    "train/samples_per_sec",
    "train/data_wait",
    "train/lr",
    "valid/loss",
    "valid/accuracy",
    "valid/top_k_acc",
    "valid/f1",
    "valid/auroc",
}
MATRIX_TAGS = ("train/confusion", "valid/confusion")  # config.json's confusion matrix: an image (and a text table) per epoch
STEP_TAGS = {"train/step_loss", "train/step_samples_per_sec"}
LOG_STEP = 5


def read_events(run_dir: Path) -> dict:
    """{kind: {tag: [(step, value)]}} as TensorBoard itself reads the run directory (all event files, purges applied)."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    return {
        "scalars": {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in tags["scalars"]},
        "histograms": {tag: [e.step for e in accumulator.Histograms(tag)] for tag in tags["histograms"]},
        "images": {tag: [e.step for e in accumulator.Images(tag)] for tag in tags["images"]},
    }


def run_on_terminal(*args: str, env: dict) -> tuple[int, str, str]:
    """``python <args>`` with stderr on a pseudo-terminal, as in an interactive shell: (exit code, stdout, terminal output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", **env}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = proc.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return proc.returncode, stdout, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Train 2 epochs (output not a terminal), then resume to 4 epochs on a terminal with images and histograms on."""
    tmp_path = tmp_path_factory.mktemp("logging")
    config = tiny_config(tmp_path, full_metrics=True, epochs=2, tensorboard=True, log_step=LOG_STEP, keep_last=0)
    path = write_config(tmp_path, config)
    run_dir = tmp_path / "saved" / "tiny" / "run"
    first = run_here("train.py", "--run-id", "run", "-c", str(path), env=THREADS)
    assert first.returncode == 0, first.stderr
    after_first = {
        "events": read_events(run_dir),
        "metrics": MetricsFile.read(run_dir / "metrics.jsonl"),
        "log": (run_dir / "train.log").read_text(),
    }
    last = run_dir / "checkpoints" / "last.pth"
    code, stdout, terminal = run_on_terminal(
        "train.py", "-r", str(last), "trainer.epochs=4", "trainer.log_images=true", "trainer.log_histograms=true", env=THREADS
    )
    assert code == 0, terminal
    batches = int(re.search(r"(\d+) batches per epoch", after_first["log"]).group(1))
    return {
        "run_dir": run_dir,
        "batches": batches,
        "first": first,
        "after_first": after_first,
        "second": {"stdout": stdout, "terminal": terminal},
        "events": read_events(run_dir),
        "metrics": MetricsFile.read(run_dir / "metrics.jsonl"),
        "log": (run_dir / "train.log").read_text(),
    }


def epoch_steps(runs: dict, epochs) -> list[int]:
    return [epoch * runs["batches"] for epoch in epochs]


# -- the first run ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_tensorboard_has_one_value_per_epoch_matching_metrics_jsonl(runs):
    events, rows = runs["after_first"]["events"], runs["after_first"]["metrics"]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert set(events["scalars"]) == EPOCH_TAGS | STEP_TAGS
    for tag in EPOCH_TAGS:
        assert [step for step, _ in events["scalars"][tag]] == epoch_steps(runs, [1, 2]), tag
    for row, (_, epoch) in zip(rows, events["scalars"]["epoch"]):
        assert epoch == row["epoch"]
    for tag, key in (
        ("train/loss", "loss"),
        ("valid/accuracy", "val_accuracy"),
        ("train/lr", "lr"),
        ("train/samples_per_sec", "samples_per_sec"),
    ):
        for row, (_, value) in zip(rows, events["scalars"][tag]):
            assert math.isclose(value, row[key], rel_tol=1e-6), (tag, value, row[key])


@pytest.mark.slow
def test_step_loss_every_log_step_and_no_images_or_histograms_unless_asked(runs):
    events = runs["after_first"]["events"]
    expected = list(range(LOG_STEP, 2 * runs["batches"] + 1, LOG_STEP))
    for tag in STEP_TAGS:
        assert [step for step, _ in events["scalars"][tag]] == expected, tag
    assert all(math.isfinite(value) and value > 0 for _, value in events["scalars"]["train/step_loss"])
    assert events["histograms"] == {}
    assert events["images"] == {tag: epoch_steps(runs, [1, 2]) for tag in MATRIX_TAGS}


@pytest.mark.slow
def test_train_log_holds_the_header_and_epoch_lines(runs):
    log, run_dir = runs["after_first"]["log"], runs["run_dir"]
    header = [
        r"experiment   tiny \(.*config\.json, new\)",
        rf"run dir      {re.escape(str(run_dir))}\n",
        r"device       cpu, world size 1, strategy single, batch 64 per process = global batch 64",
        r"model        fixtures\.model:TinyCNN: [\d,]+ trainable of [\d,]+ parameters",
        r"data         [\d,]+ training samples, [\d,]+ validation samples, \d+ batches per epoch",
        r"epochs       1\.\.2, monitor min val_loss",
        rf"resume with  python train.py -r {re.escape(str(run_dir / 'checkpoints' / 'last.pth'))}",
    ]
    for line in header:
        assert re.search(line, log), line
    assert [int(e) for e in re.findall(r"INFO epoch (\d+)  loss \S+  accuracy", log)] == [1, 2]


@pytest.mark.slow
def test_output_that_is_not_a_terminal_gets_plain_lines_and_a_summary(runs):
    first, rows, run_dir = runs["first"], runs["after_first"]["metrics"], runs["run_dir"]
    batches = runs["batches"]
    plain = re.findall(rf"epoch (\d) \[(\d+)/{batches}\] step (\d+)  loss [\d.e-]+  \d+ samples/s", first.stdout)
    assert [int(step) for _, _, step in plain] == list(range(LOG_STEP, 2 * batches + 1, LOG_STEP))
    assert "\r" not in first.stderr and "batch/s" not in first.stderr  # no progress bars
    best = min(rows, key=lambda row: row["val_loss"])
    summary = f"done: best val_loss {best['val_loss']:.6g} at epoch {best['epoch']}; checkpoints in {run_dir / 'checkpoints'}"
    assert summary in first.stdout


# -- the resumed run ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_appends_each_epoch_exactly_once(runs):
    rows = runs["metrics"]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert rows[:2] == runs["after_first"]["metrics"]  # the first run's rows are kept as they were


@pytest.mark.slow
def test_tensorboard_after_resume_still_has_one_value_per_epoch(runs):
    scalars = runs["events"]["scalars"]
    assert set(scalars) == EPOCH_TAGS | STEP_TAGS
    for tag in EPOCH_TAGS:
        assert [step for step, _ in scalars[tag]] == epoch_steps(runs, [1, 2, 3, 4]), tag
    assert [value for _, value in scalars["epoch"]] == [1, 2, 3, 4]
    for tag in STEP_TAGS:
        assert [step for step, _ in scalars[tag]] == list(range(LOG_STEP, 4 * runs["batches"] + 1, LOG_STEP)), tag
    for row, (_, value) in zip(runs["metrics"], scalars["valid/loss"]):
        assert math.isclose(value, row["val_loss"], rel_tol=1e-6)


@pytest.mark.slow
def test_images_and_histograms_once_per_epoch_when_asked(runs):
    events, batches = runs["events"], runs["batches"]
    assert events["images"].pop("train/inputs") == [3 * batches, 4 * batches]  # first batch of epochs 3 and 4, logged at their last step
    assert events["images"] == {tag: epoch_steps(runs, [1, 2, 3, 4]) for tag in MATRIX_TAGS}
    model_params = {f"params/{name}" for name in torch.load(runs["run_dir"] / "checkpoints" / "last.pth", weights_only=True)["model"]}
    assert set(events["histograms"]) == model_params
    for tag, steps in events["histograms"].items():
        assert steps == epoch_steps(runs, [3, 4]), tag


@pytest.mark.slow
def test_a_terminal_gets_train_and_validation_bars(runs):
    terminal, stdout = runs["second"]["terminal"], runs["second"]["stdout"]
    for epoch in (3, 4):
        assert re.search(rf"epoch {epoch}: +\d+%\|", terminal), terminal[-2000:]
        assert re.search(rf"valid {epoch}: +\d+%\|", terminal), terminal[-2000:]
    assert "batch/s" in terminal and "loss=" in terminal and "samples_s=" in terminal
    assert "samples/s" not in stdout  # the bar replaces the plain periodic lines
    assert re.search(r"INFO epoch 4  loss", stdout)


@pytest.mark.slow
def test_train_log_continues_across_the_resume(runs):
    log = runs["log"]
    assert log.startswith(runs["after_first"]["log"])
    assert re.findall(r"experiment   tiny \(.*, (new|resume)\)$", log, flags=re.M) == ["new", "resume"]
    assert re.search(r"epochs       3\.\.4", log)
    assert [int(e) for e in re.findall(r"INFO epoch (\d+)  loss \S+  accuracy", log)] == [1, 2, 3, 4]
    assert log.count("done: best val_loss") == 2


# -- the pieces, in-process -----------------------------------------------------------------------


def test_a_second_run_in_the_same_process_logs_only_to_its_own_train_log(tmp_path):
    setup_logging(1)
    try:
        first = RunRecorder.start(RunDirClaim.create(tmp_path / "first").path, {}, tensorboard=False)
        get_logger().info("line of the first run")
        first.close()
        second = RunRecorder.start(RunDirClaim.create(tmp_path / "second").path, {}, tensorboard=False)
        get_logger().info("line of the second run")
        second.close()
    finally:
        close_log_files()
    assert "second run" not in (tmp_path / "first" / "train.log").read_text()
    assert "line of the second run" in (tmp_path / "second" / "train.log").read_text()
    assert "first run" not in (tmp_path / "second" / "train.log").read_text()


def test_verbosity_sets_the_console_and_train_log_keeps_info(tmp_path, capsys):
    logger = get_logger()
    try:
        for verbosity, console in ((0, ["warn"]), (1, ["info", "warn"]), (2, ["debug", "info", "warn"])):
            setup_logging(verbosity)
            log_file = tmp_path / f"train-{verbosity}.log"
            add_log_file(log_file)
            logger.debug("debug")
            logger.info("info")
            logger.warning("warn")
            close_log_files()
            shown = [line.split()[-1] for line in capsys.readouterr().out.splitlines()]
            assert shown == console
            written = [line.split()[-1] for line in log_file.read_text().splitlines()]
            assert written == (["debug", "info", "warn"] if verbosity == 2 else ["info", "warn"])
        setup_logging(1, rank=1)
        logger.info("info")
        logger.warning("warn")
        assert capsys.readouterr().out.splitlines()[-1].startswith("[rank 1] ")
    finally:
        setup_logging(1)


def test_metrics_file_moves_rows_after_the_resumed_epoch_aside_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    metrics = MetricsFile(path)
    for epoch in (1, 2, 3):
        metrics.append({"epoch": epoch, "loss": 1.0 / epoch, "val_loss": float("nan")})
    with open(path, "a") as handle:
        handle.write('{"epoch": 4, "lo')  # a crash in the middle of a write
    assert [row["epoch"] for row in MetricsFile.read(path)] == [1, 2, 3]
    assert MetricsFile.read(path)[0]["val_loss"] is None  # NaN is not JSON
    MetricsFile.keep_epochs(path, 2, tmp_path / "superseded.jsonl")
    MetricsFile(path).append({"epoch": 3, "loss": 0.25})
    assert [(row["epoch"], row["loss"]) for row in MetricsFile.read(path)] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert all(json.loads(line) for line in path.read_text().splitlines())
    moved = [json.loads(line) for line in (tmp_path / "superseded.jsonl").read_text().splitlines()]
    assert moved == [{"epoch": 3, "loss": 1 / 3, "val_loss": None}, {"torn_line": '{"epoch": 4, "lo'}]  # kept, not lost


def test_a_resumed_writer_replaces_what_came_after_the_checkpoint(tmp_path):
    """What RunRecorder does on resume: events after the checkpoint's step are purged, not duplicated."""
    first = TensorboardWriter(tmp_path, True)
    for step in (10, 20, 30):
        first.add_scalars({"train/loss": float(step)}, step)
    first.close()
    first.close()  # closing twice is harmless
    time.sleep(1.1)  # event files sort by their second of creation (in one process, then by a counter that may gain a digit)
    resumed = TensorboardWriter(tmp_path, True, purge_step=21)
    for step in (30, 40):
        resumed.add_scalars({"train/loss": step + 0.5}, step)
    resumed.close()
    assert read_events(tmp_path)["scalars"]["train/loss"] == [(10, 10.0), (20, 20.0), (30, 30.5), (40, 40.5)]


def test_disabled_tensorboard_writes_nothing(tmp_path):
    writer = TensorboardWriter(tmp_path, False)
    writer.add_scalars({"train/loss": 1.0}, 1)
    writer.add_histograms(torch.nn.Linear(2, 2), 1)
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_a_run_directory_is_claimed_once_and_discarded_only_by_its_creator(tmp_path):
    claim = RunDirClaim.create(tmp_path / "saved" / "name" / "new")
    RunRecorder.start(claim.path, {"name": "x"}, tensorboard=True).close()
    assert (claim.path / "config.json").is_file() and (claim.path / "checkpoints").is_dir()
    with pytest.raises(UserError, match=rf"in use by process {os.getpid()}; choose another --run-id"):
        RunDirClaim.create(claim.path)  # a run with the same --run-id that is still going
    with pytest.raises(UserError, match=rf"in use by process {os.getpid()}"):
        RunDirClaim.open(claim.path)  # resuming a run that is still going
    claim.release()
    with pytest.raises(UserError, match=r"already exists; choose another --run-id, or resume it with -r"):
        RunDirClaim.create(claim.path)
    claim.created = True  # what discard() takes back: the directory this claim made
    claim.discard()
    assert not (tmp_path / "saved").exists()  # the parents it made go too, when empty
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")
    old = RunDirClaim.open(tmp_path / "old")
    old.discard()
    assert (tmp_path / "old" / "config.json").is_file()
    RunDirClaim.open(tmp_path / "old").release()  # the lock went with the claim
    close_log_files()
    assert not any(isinstance(h, logging.FileHandler) for h in get_logger().handlers)
