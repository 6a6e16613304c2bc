"""The shipped ``slurm/train.sbatch`` on a real single-node Slurm: a warning signal, a requeue, the same run.

The fixture starts MUNGE (unless it runs already), ``slurmctld`` and ``slurmd`` with a config in a
temporary folder (ports of their own) and stops them by their pid files. Without Slurm's and
MUNGE's binaries (``apt-get install slurm-wlm munge``, which ``.ci/run`` does) or without root,
the test is skipped and says why.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, last_checkpoint, metric_rows, tiny_config, write_config

pytestmark = pytest.mark.slow
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue", "srun")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [name for name in BINARIES if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if missing:
        pytest.skip(f"no local Slurm: {', '.join(missing)} not installed (apt-get install -y slurm-wlm munge, as .ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("a local Slurm runs its daemons as root here; run the tests as root (CI does)")
    folder = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    conf = folder / "slurm.conf"
    settings = {
        "ClusterName": "local",
        "SlurmctldHost": host,
        "SlurmctldPort": free_port(),
        "SlurmdPort": free_port(),
        "AuthType": "auth/munge",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "StateSaveLocation": folder / "state",
        "SlurmdSpoolDir": folder / "spool",
        "SlurmctldPidFile": folder / "slurmctld.pid",
        "SlurmdPidFile": folder / "slurmd.pid",
        "SlurmctldLogFile": folder / "slurmctld.log",
        "SlurmdLogFile": folder / "slurmd.log",
        "AccountingStorageType": "accounting_storage/none",
        "JobCompType": "jobcomp/none",
        "MpiDefault": "none",
        "ReturnToService": 2,
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines += [
        f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
    ]
    conf.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started_munge = None
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True)
        started_munge = int(wait_for(lambda: _read(Path("/run/munge/munged.pid")), 10, "munged"))
    subprocess.run(["slurmctld", "-c"], env=env, check=True)
    subprocess.run(["slurmd"], env=env, check=True)
    try:
        wait_for(
            lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout,
            30,
            "an idle node",
        )
        yield env
    finally:
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            pid = _read(folder / pid_file)
            if pid:
                _stop(int(pid))
        if started_munge:
            _stop(started_munge)


def _read(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def submit(env: dict, output: Path, *args: str) -> str:
    command = [
        "sbatch",
        "--parsable",
        f"--chdir={ROOT}",
        f"--output={output}",
        f"--export=ALL,PYTHON={ROOT / '.venv' / 'bin' / 'python'},OMP_NUM_THREADS=1,PYTHONPATH={ROOT}:{ROOT / 'tests'}",
        str(ROOT / "slurm" / "train.sbatch"),
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.strip()


def state_of(env: dict, job: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return next((part.split("=", 1)[1] for part in shown.split() if part.startswith("JobState=")), "")


def test_the_sbatch_script_warned_in_validation_requeues_itself_then_survives_scancel(slurm, tmp_path):
    """The shipped script with 2 tasks: SIGUSR1 to the batch script during epoch 1's validation (what
    ``--signal=B:USR1@120`` sends), the job requeues itself and continues; ``scancel`` mid-epoch 2
    stops it with a checkpoint; a new job naming the run id finishes it. Same weights and rows as
    an uninterrupted job, one run directory."""
    config = tiny_config(tmp_path, epochs=2)
    config["data_loader"] = {
        "type": "fault_injection:SleepyDigitsDataLoader",
        "args": {"batch_size": 64, "delay": 0.004},
    }  # steps a signal can land in
    args = ("-c", str(write_config(tmp_path, config)), "--trust-checkpoint", "trainer.save_every_n_steps=3", "trainer.log_step=1")
    straight = submit(slurm, tmp_path / "straight.out", *args)
    job = submit(slurm, tmp_path / "job.out", *args)  # runs once the first is done (the node has 2 CPUs for 2 tasks)
    wait_for(lambda: state_of(slurm, straight) == "COMPLETED", 240, "the uninterrupted job")
    out = tmp_path / "job.out"
    wait_for(lambda: out.is_file() and "epoch 1 [10/10]" in out.read_text(), 120, "epoch 1's last step: validation next")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True)
    wait_for(lambda: state_of(slurm, job) == "PENDING", 60, "the job to requeue itself")
    text = out.read_text()
    assert "stopped by SIGUSR1" in text and f"requeued Slurm job {job}" in text, text[-3000:]
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm, check=True)  # Slurm delays a requeued job
    run_dir = tmp_path / "saved" / "tiny" / f"slurm-{job}"
    wait_for(
        lambda: f"continuing {run_dir} from last.pth, epoch 1" in out.read_text() and "epoch 2 [4/10]" in out.read_text(), 120, "epoch 2"
    )
    subprocess.run(["scancel", job], env=slurm, check=True)  # SIGTERM to every step, SIGKILL after KillWait
    wait_for(lambda: state_of(slurm, job) == "CANCELLED", 60, "the cancel")
    assert "stopped by SIGTERM" in out.read_text(), out.read_text()[-3000:]
    assert last_checkpoint(run_dir)["progress"]["epoch"] == 2
    again = submit(slurm, tmp_path / "again.out", *args, "--run-id", f"slurm-{job}")
    wait_for(lambda: state_of(slurm, again) == "COMPLETED", 240, "the job that finishes the run")
    assert f"continuing {run_dir} from last.pth, epoch 2, mid-epoch" in (tmp_path / "again.out").read_text()
    saved = run_dir.parent
    assert sorted(p.name for p in saved.iterdir()) == sorted([f"slurm-{straight}", f"slurm-{job}"])
    a, b = last_checkpoint(saved / f"slurm-{straight}"), last_checkpoint(run_dir)
    assert a["world_size"] == b["world_size"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert metric_rows(saved / f"slurm-{straight}", timing=False) == metric_rows(run_dir, timing=False)
