"""Exact resume: epoch boundaries and mid-epoch after SIGTERM / SIGKILL.

Each test trains the same tiny experiment twice, once without interruption and once
interrupted by a real signal at a random batch and resumed with ``-r``, and requires the final
weights to be bitwise equal on CPU (dropout on) and the logged metrics to be equal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TESTS_ENV, last_checkpoint, metric_rows, run_here, run_script, tiny_config, write_config

pytestmark = pytest.mark.slow  # real signals; the SIGKILLed runs and the process-group signal in subprocesses


def experiment(tmp_path: Path, **trainer) -> Path:
    config = tiny_config(tmp_path, full_metrics=True, epochs=3, **trainer)  # torchmetrics state resumes exactly too
    config["arch"] = {"type": "fault_injection:SignalingDigitsCNN", "args": {"num_classes": 10, "dropout": 0.3}}
    return write_config(tmp_path, config)


def train(config: Path, run_id: str, *overrides: str, env: dict | None = None):
    """In-process unless the run is to be SIGKILLed: a SIGTERM or SIGINT the model sends its own
    process is a real signal here too, and ``main`` returns the exit code the process would end with."""
    args = ("train.py", "-c", str(config), "--run-id", run_id, *overrides, "--trust-checkpoint")
    if (env or {}).get("SIGNAL_NAME") != "SIGKILL":
        return run_here(*args, env={**TESTS_ENV, **(env or {})})
    return run_script(*args, env={**TESTS_ENV, **env})


def resume(checkpoint: Path, *overrides: str):
    return run_here("train.py", "-r", str(checkpoint), *overrides, "--trust-checkpoint", env=TESTS_ENV)


def assert_same_run(a: Path, b: Path) -> None:
    state_a, state_b = last_checkpoint(a), last_checkpoint(b)
    assert state_a["model"].keys() == state_b["model"].keys()
    for key in state_a["model"]:
        assert torch.equal(state_a["model"][key], state_b["model"][key]), f"{key} differs after resume"
    assert state_a["progress"]["global_step"] == state_b["progress"]["global_step"]
    assert metric_rows(a, timing=False) == metric_rows(b, timing=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, shared by the tests that interrupt the same experiment."""
    tmp_path = tmp_path_factory.mktemp("reference")
    config = experiment(tmp_path)
    result = train(config, "straight")
    assert result.returncode == 0, result.stderr
    return tmp_path / "saved" / "tiny" / "straight"


def test_resume_at_epoch_boundary_is_bitwise_exact(tmp_path, reference):
    config = experiment(tmp_path)
    first = train(config, "split", "trainer.epochs=1")
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "saved" / "tiny" / "split"
    second = resume(run_dir / "checkpoints" / "last.pth", "trainer.epochs=3")
    assert second.returncode == 0, second.stderr
    assert_same_run(reference, run_dir)


def test_sigterm_mid_epoch_then_resume_is_bitwise_exact(tmp_path, reference, rng):
    batches_per_epoch = 20  # 1,222 training samples in batches of 64
    at = rng.randint(batches_per_epoch + 2, 2 * batches_per_epoch - 2)  # inside epoch 2
    config = experiment(tmp_path)
    stopped = train(config, "interrupted", env={"SIGNAL_AT_BATCH": str(at + 1), "SIGNAL_NAME": "SIGTERM"})
    assert stopped.returncode == 128 + signal.SIGTERM, (at, stopped.stdout, stopped.stderr)
    run_dir = tmp_path / "saved" / "tiny" / "interrupted"
    assert "python train.py -r" in stopped.stdout
    state = last_checkpoint(run_dir)
    assert (state["progress"]["epoch"], state["progress"]["batch_in_epoch"]) == (2, at - batches_per_epoch), at
    assert len(metric_rows(run_dir)) == 1
    # the running epoch state travels in the checkpoint: every sample of the epoch's trained batches is counted
    metrics = state["ranks"][0]["train_metrics"]  # measured, or queued for the group's measurement
    assert metrics["count"] + (metrics["group"]["rows"] if metrics["group"] else 0) == (at - batches_per_epoch) * 64
    assert state["ranks"][0]["losses"]["samples"] == (at - batches_per_epoch) * 64

    resumed = resume(run_dir / "checkpoints" / "last.pth")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming epoch 2 at batch {at - batches_per_epoch} of {batches_per_epoch}" in resumed.stdout
    assert_same_run(reference, run_dir)


def test_sigkill_with_step_checkpoints_then_resume_is_bitwise_exact(tmp_path, reference, rng):
    at = rng.randint(24, 57)
    config = experiment(tmp_path, save_every_n_steps=7)
    killed = train(config, "killed", env={"SIGNAL_AT_BATCH": str(at + 1), "SIGNAL_NAME": "SIGKILL"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = tmp_path / "saved" / "tiny" / "killed"
    state = last_checkpoint(run_dir)  # whatever the moment of the kill, last.pth loads
    assert state["progress"]["global_step"] <= at - 1
    resumed = resume(run_dir / "checkpoints" / "last.pth")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(reference, run_dir)


def test_sigterm_with_dataloader_workers_is_bitwise_exact(tmp_path):
    """The regular DataLoader path with worker processes resumes mid-epoch exactly too."""
    overrides = ("data_loader.args.in_memory=false", "data_loader.args.num_workers=2", "trainer.epochs=2")
    config = experiment(tmp_path)
    straight = train(config, "straight", *overrides)
    assert straight.returncode == 0, straight.stderr
    stopped = train(config, "interrupted", *overrides, env={"SIGNAL_AT_BATCH": "28", "SIGNAL_NAME": "SIGINT"})
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr
    run_dir = tmp_path / "saved" / "tiny" / "interrupted"
    resumed = resume(run_dir / "checkpoints" / "last.pth")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "saved" / "tiny" / "straight", run_dir)


def test_a_signal_to_the_whole_process_group_with_workers_stops_at_a_step_and_resumes(tmp_path, rng):
    """Ctrl-C and preemption signal every process of the group, DataLoader workers too: the run still
    stops at a step boundary with a checkpoint (workers leave stops to the main process)."""
    config = experiment(tmp_path)
    overrides = ["data_loader.args.in_memory=false", "data_loader.args.num_workers=2", "trainer.epochs=2", "trainer.log_step=1"]
    command = [sys.executable, "train.py", "-c", str(config), "--run-id", "group", *overrides, "--trust-checkpoint"]
    env = {**os.environ, **TESTS_ENV, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = tmp_path / "saved" / "tiny" / "group" / "train.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and " step " in log.read_text()):
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.5))
    os.killpg(process.pid, rng.choice([signal.SIGTERM, signal.SIGINT]))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT), stderr[-3000:]
    assert "worker" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert "resume with: python train.py -r" in stdout
    resumed = resume(tmp_path / "saved" / "tiny" / "group" / "checkpoints" / "last.pth", *overrides[:2])
    assert resumed.returncode == 0, resumed.stderr
