"""``train.py --auto-resume``: the identical command starts a run, then continues it exactly.

One uninterrupted run of a tiny experiment (started with ``--auto-resume``) is the reference; the
other tests interrupt the same experiment with real signals, damage its newest checkpoint, change
its config or restart it under torchrun, run the identical command again, and compare weights
bitwise and ``metrics.jsonl`` row by row with the reference.
"""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest
import torch
from helpers import TESTS_ENV, last_checkpoint, metric_rows, run_here, run_script, tiny_config, write_config

from app.auto_resume import first_difference, scheduler_run_id
from utils.checkpoints import newest_loadable
from utils.distributed import adopt_slurm_environment, first_host
from utils.requeue import REQUEUE_FAILED

BATCHES = 20  # 1,222 training samples in batches of 64


def experiment(tmp_path):
    config = tiny_config(tmp_path, epochs=2, save_period=1)
    config["arch"] = {"type": "fault_injection:SignalingDigitsCNN", "args": {"num_classes": 10, "dropout": 0.3}}
    return write_config(tmp_path, config)


def command(config, run_id: str, *overrides: str) -> list[str]:
    return ["train.py", "-c", str(config), "--auto-resume", "--run-id", run_id, *overrides, "--trust-checkpoint"]


def assert_same_run(a, b) -> None:
    state_a, state_b = last_checkpoint(a), last_checkpoint(b)
    for key in state_a["model"]:
        assert torch.equal(state_a["model"][key], state_b["model"][key]), f"{key} differs"
    assert state_a["progress"] == state_b["progress"]
    assert metric_rows(a, timing=False) == metric_rows(b, timing=False)  # each epoch once, the same numbers


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("auto")
    config = experiment(tmp_path)
    started = run_here(*command(config, "straight"), env=TESTS_ENV)
    assert started.returncode == 0, started.stderr
    assert "run id straight (from --run-id)" in started.stdout and "auto-resume: starting" in started.stdout
    return config, tmp_path / "saved" / "tiny"


def test_the_same_command_on_a_finished_run_has_nothing_to_train(reference):
    config, saved = reference
    rows = metric_rows(saved / "straight")
    again = run_here(*command(config, "straight"), env=TESTS_ENV)
    assert again.returncode == 0, again.stderr
    assert "has finished; nothing to train" in again.stdout
    assert metric_rows(saved / "straight") == rows


def test_a_changed_config_is_refused_in_one_line(reference):
    config, saved = reference
    refused = run_here(*command(config, "straight", "optimizer.args.lr=0.5"), env=TESTS_ENV)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimizer.args.lr differs from the run's stored config" in lines[0], refused.stderr


def test_more_epochs_is_a_change_the_same_run_allows(reference):
    config, saved = reference
    subprocess.run(["cp", "-a", str(saved / "straight"), str(saved / "more")], check=True)
    more = run_here(*command(config, "more", "trainer.epochs=3"), env=TESTS_ENV)
    assert more.returncode == 0, more.stderr
    assert "from last.pth, epoch 2" in more.stdout
    assert [row["epoch"] for row in metric_rows(saved / "more")] == [1, 2, 3]
    assert metric_rows(saved / "more", timing=False)[:2] == metric_rows(saved / "straight", timing=False)
    assert '"epochs": 3' in (saved / "more" / "config-resume-1.json").read_text()


def test_sigterm_twice_then_the_same_command_ends_as_an_uninterrupted_run(reference, rng):
    config, saved = reference
    before = {p.name for p in saved.iterdir()}
    first, second = rng.randint(3, BATCHES - 2), rng.randint(3, BATCHES - 2)  # inside epoch 1, then inside epoch 2
    stopped = run_here(*command(config, "stopped"), env={**TESTS_ENV, "SIGNAL_AT_BATCH": str(first + 1)})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "resume with: the same command" in stopped.stdout
    state = last_checkpoint(saved / "stopped")
    assert (state["progress"]["epoch"], state["progress"]["batch_in_epoch"]) == (1, first)
    again = run_here(*command(config, "stopped"), env={**TESTS_ENV, "SIGNAL_AT_BATCH": str(BATCHES - first + second + 1)})
    assert again.returncode == 128 + signal.SIGTERM, again.stderr
    assert "continuing" in again.stdout and "mid-epoch" in again.stdout
    progress = last_checkpoint(saved / "stopped")["progress"]
    assert (progress["epoch"], progress["batch_in_epoch"]) == (2, second)
    finished = run_here(*command(config, "stopped"), env=TESTS_ENV)
    assert finished.returncode == 0, finished.stderr
    assert {p.name for p in saved.iterdir()} == before | {"stopped"}  # three commands, one run directory
    assert_same_run(saved / "straight", saved / "stopped")


def test_the_requeue_signal_outside_slurm_saves_says_so_and_the_same_command_continues(reference, rng):
    """SIGUSR1 with asynchronous saves: the stop waits for its checkpoint, the exit code says no requeue was made."""
    config, saved = reference
    at = rng.randint(BATCHES + 2, 2 * BATCHES - 2)
    env = {**TESTS_ENV, "SIGNAL_AT_BATCH": str(at + 1), "SIGNAL_NAME": "SIGUSR1", "SLURM_JOB_ID": "", "SLURM_ARRAY_JOB_ID": ""}
    background = ("trainer.async_save=true", "trainer.save_every_n_steps=5")  # step checkpoints written in a thread
    stopped = run_here(*command(config, "warned", *background), env=env)
    assert stopped.returncode == REQUEUE_FAILED, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith("error: stopped for a requeue with a checkpoint, but not inside a Slurm job")
    progress = last_checkpoint(saved / "warned")["progress"]
    assert (progress["epoch"], progress["batch_in_epoch"]) == (2, at - BATCHES)
    again = run_here(*command(config, "warned", *background), env=TESTS_ENV)
    assert again.returncode == 0, again.stderr
    assert_same_run(saved / "straight", saved / "warned")


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_good_one(reference):
    """``last``, ``best`` and ``epoch-2`` are one file: damaged in place, the run continues from
    ``epoch-1``, says so in one line, trains epoch 2 again and ends as the uninterrupted run."""
    config, saved = reference
    subprocess.run(["cp", "-a", str(saved / "straight"), str(saved / "damaged")], check=True)  # keeps the hard links
    (saved / "damaged" / "manifest.json").write_text((saved / "straight" / "manifest.json").read_text())
    last = saved / "damaged" / "checkpoints" / "last.pth"
    data = bytearray(last.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    with open(last, "r+b") as handle:  # in place: every link to it is damaged too
        handle.write(data)
    resumed = run_here(*command(config, "damaged"), env=TESTS_ENV)
    assert resumed.returncode == 0, resumed.stderr
    passed = [line for line in resumed.stdout.splitlines() if "passing over a damaged checkpoint" in line]
    assert len(passed) == 1 and "last.pth" in passed[0], resumed.stdout
    assert "from epoch-1.pth (the newest that loads), epoch 1" in resumed.stdout
    assert (saved / "damaged" / "checkpoints" / "epoch-1.pth").is_file()
    assert_same_run(saved / "straight", saved / "damaged")


def test_a_truncated_checkpoint_is_passed_over(tmp_path, reference):
    _, saved = reference
    folder = tmp_path / "checkpoints"
    shutil.copytree(saved / "straight" / "checkpoints", folder)
    size = (folder / "last.pth").stat().st_size
    with open(folder / "last.pth", "r+b") as handle:
        handle.truncate(size // 3)
    for name in ("best.pth", "epoch-2.pth"):
        (folder / name).unlink()
    found = newest_loadable(folder)
    assert found.path.name == "epoch-1.pth" and len(found.skipped) == 1 and "truncated" in found.skipped[0]


def test_run_ids_come_from_the_scheduler():
    assert scheduler_run_id({"SLURM_JOB_ID": "41", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"})[0] == "slurm-40_3"
    assert scheduler_run_id({"SLURM_JOB_ID": "41"})[0] == "slurm-41"
    assert scheduler_run_id({"TORCHELASTIC_RUN_ID": "none"}) is None
    assert scheduler_run_id({"TORCHELASTIC_RUN_ID": "abc"})[0] == "torchrun-abc"
    assert first_difference({"a": {"b": 1, "c": [1]}}, {"a": {"b": 1, "c": [2]}}) == "a.c"
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == "b"


def test_slurm_tasks_become_torchrun_variables():
    env = {"SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "5"}
    assert adopt_slurm_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("1", "2", "1", "gpu07")
    assert int(env["MASTER_PORT"]) == 15005
    assert not adopt_slurm_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})  # the batch script itself: one process
    assert not adopt_slurm_environment({"RANK": "0", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"})  # srun torchrun
    assert first_host("node[3-5,9],gpu1") == "node3"


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_into_the_same_run(tmp_path):
    """2 processes, ``--max-restarts 2``; rank 1 is SIGKILLed mid-epoch 2 in the first attempt: torchrun
    restarts both, the identical command continues from the step checkpoint, and the run ends with
    bitwise the weights and rows of an uninterrupted 2-process run, in one run directory."""
    config = experiment(tmp_path)
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=2", "--monitor-interval=0.5")
    env = {**TESTS_ENV, "OMP_NUM_THREADS": "1"}
    args = ("data_loader.args.batch_size=32", "trainer.save_every_n_steps=3")
    straight = run_script(*torchrun, *command(config, "ddp", *args), env=env, timeout=300)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    kill = {"SIGNAL_AT_BATCH": str(BATCHES + 12), "SIGNAL_NAME": "SIGKILL", "SIGNAL_RANK": "1", "SIGNAL_ATTEMPT": "0"}
    killed = run_script(*torchrun, *command(config, "killed", *args), env={**env, **kill}, timeout=300)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert "continuing" in killed.stdout and "mid-epoch" in killed.stdout, killed.stdout
    saved = tmp_path / "saved" / "tiny"
    assert sorted(p.name for p in saved.iterdir()) == ["ddp", "killed"]
    assert [row["epoch"] for row in metric_rows(saved / "killed")] == [1, 2]
    assert_same_run(saved / "ddp", saved / "killed")
