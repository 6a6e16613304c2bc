"""Hardening, round 3: outputs claimed and never left half-written, damage found by checksums,
signals while a run starts, and torch.distributed runs whose checkpoint, peer or launcher fails.

The cases that need real processes (signals, kills, launchers) run them; the rest run in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TESTS_ENV, build_trainer, entry_point, run_here, save_crafted, tiny_config, write_config

import predict
from logger.logger import close_log_files
from utils.files import OutputLock

THREADS = {"OMP_NUM_THREADS": "1"}


def popen(*args, env: dict | None = None) -> subprocess.Popen:
    full = {**os.environ, **TESTS_ENV, **THREADS, **(env or {})}
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}"))


@pytest.fixture(scope="module")
def sleepy_run(tmp_path_factory) -> Path:
    """A one-batch run over a data set that sleeps per sample: its predictions take long enough to interrupt."""
    tmp = tmp_path_factory.mktemp("sleepy")
    config = tiny_config(tmp, epochs=1, limit_batches=1)
    config["data_loader"] = {"type": "fault_injection:SleepyDigitsDataLoader", "args": {"batch_size": 64, "delay": 0.0}}
    trainer, run_dir = build_trainer(tmp, config)
    trainer.train()
    close_log_files()
    return run_dir


def test_an_output_another_process_writes_is_refused_and_an_existing_one_needs_force(tmp_path, sleepy_run, capsys):
    out = tmp_path / "p.jsonl"
    args = ["-r", str(sleepy_run / "checkpoints" / "last.pth"), "--split", "train", "--out", str(out), "--trust-checkpoint"]
    with OutputLock(out, "--out"):  # another process writing it
        assert predict.main(args) == 2
        assert f"--out: {out} is being written by process {os.getpid()}" in capsys.readouterr().err
    assert not out.exists() and not leftovers(tmp_path, "p.jsonl")
    assert predict.main(args) == 0, capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 1222
    capsys.readouterr()
    assert predict.main(args) == 2 and "exists; pass --force" in capsys.readouterr().err
    assert predict.main([*args, "--force"]) == 0 and not leftovers(tmp_path, "p.jsonl")


@pytest.mark.slow
def test_a_signal_during_predict_leaves_nothing_and_a_kill_leaves_what_the_next_run_sweeps(tmp_path, sleepy_run):
    out = tmp_path / "p.jsonl"
    args = ["predict.py", "-r", sleepy_run / "checkpoints" / "last.pth", "--split", "train", "--out", out, "--trust-checkpoint"]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        process = popen(*args, "data_loader.args.delay=0.004")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(".tmp-" in name for name in leftovers(tmp_path, "p.jsonl")):
            time.sleep(0.02)  # rows are being written to this process's part
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
        assert process.returncode in (128 + signum, -signum) and "Traceback" not in err, err
        assert not out.exists()
        if signum != signal.SIGKILL:
            assert not leftovers(tmp_path, "p.jsonl"), leftovers(tmp_path, "p.jsonl")
    assert leftovers(tmp_path, "p.jsonl")  # what SIGKILL left: its part and its claim
    done = run_here(*args)  # the next run: what it sweeps up is the check, not its process
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == 1222 and not leftovers(tmp_path, "p.jsonl")


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_checkpoint_is_one_line_naming_the_part(tmp_path, capsys):
    config = tiny_config(tmp_path, epochs=1, limit_batches=1)
    trainer, run_dir = build_trainer(tmp_path, config)
    trainer.train()
    close_log_files()
    last = run_dir / "checkpoints" / "last.pth"
    with zipfile.ZipFile(last) as archive:  # the largest record holds fc1's weights
        record = max(archive.infolist(), key=lambda info: info.file_size)
    data = last.read_bytes()
    header = data[record.header_offset : record.header_offset + 30]
    start = record.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    damaged = run_dir / "checkpoints" / "damaged.pth"
    damaged.write_bytes(data)
    flip(damaged, start + record.file_size // 2)
    test_main = entry_point("test.py")
    assert test_main(["-r", str(damaged), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "the part 'model' does not match its checksum" in err and err.count("\n") == 1, err
    assert torch.load(damaged, weights_only=True)["model"]  # torch itself reads it without a word: that is why
    state = torch.load(last, weights_only=True)
    state["progress"]["global_step"] += 1  # a change in a small part, as one flipped bit there would make
    torch.save(state, damaged)
    assert test_main(["-r", str(damaged), "--out", str(tmp_path / "m.json")]) == 2
    assert "the part 'progress' does not match its checksum" in capsys.readouterr().err


@pytest.mark.slow
def test_two_signals_while_a_run_starts_stop_it_once_and_leave_nothing(tmp_path):
    config = tiny_config(tmp_path, epochs=1)
    config["data_loader"] = {"type": "fault_injection:SleepyDigitsDataLoader", "args": {"batch_size": 64, "delay": 0.05}}  # a slow pre-flight
    process = popen("train.py", "-c", write_config(tmp_path, config), "--trust-checkpoint")
    time.sleep(3.0)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err and "nothing was created" in err, err
    assert not (tmp_path / "saved").exists()


# -- torch.distributed: every rank stops at the same check, once said; no rank outlives its peers --


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ranks(*args, env: dict | None = None) -> list[subprocess.Popen]:
    """Two train.py processes joined as torchrun would join them (env:// rendezvous), without a
    launcher that would end one as soon as the other fails: what each says is what this tests."""
    base = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    return [popen("train.py", *args, env={**base, "RANK": str(r), "LOCAL_RANK": str(r), **(env or {})}) for r in range(2)]


def signaling_config(tmp_path: Path, **trainer) -> Path:
    config = tiny_config(tmp_path, epochs=2, **trainer)
    config["arch"] = {"type": "fault_injection:SignalingDigitsCNN", "args": {"num_classes": 10, "dropout": 0.0}}
    config["data_loader"]["args"]["in_memory"] = False
    return write_config(tmp_path, config)


@pytest.mark.slow
def test_a_rank_killed_mid_run_is_one_line_on_its_peer_and_a_damaged_rank_state_stops_both(tmp_path):
    config = signaling_config(tmp_path, limit_batches=3)
    kill = {"SIGNAL_AT_BATCH": "5", "SIGNAL_NAME": "SIGKILL", "SIGNAL_RANK": "1"}  # epoch 2's first batch: epoch 1's checkpoint is written
    rank0, rank1 = ranks("-c", config, "--run-id", "two", "--trust-checkpoint", env=kill)
    _, err0 = rank0.communicate(timeout=180)
    rank1.wait(timeout=60)
    assert rank1.returncode == -signal.SIGKILL
    assert rank0.returncode == 3 and "Traceback" not in err0, err0
    assert [line for line in err0.splitlines() if "error:" in line][0].startswith("error: another process of this run is gone"), err0

    last = tmp_path / "saved" / "tiny" / "two" / "checkpoints" / "last.pth"  # the two processes' epoch 1: what the killed run left
    state = torch.load(last, weights_only=True)
    assert state["progress"]["epoch"] == 1 and len(state["ranks"]) == 2
    state["ranks"] = state["ranks"][:1]  # a list of process states cut short
    save_crafted(state, last)
    started = time.monotonic()
    resumed = ranks("-r", last, "trainer.epochs=3", "--trust-checkpoint")
    errors = [p.communicate(timeout=120)[1] for p in resumed]
    assert time.monotonic() - started < 60 and [p.returncode for p in resumed] == [2, 2], errors  # no rank waits for the other
    said = [line for err in errors for line in err.splitlines() if "error:" in line]
    assert len(said) == 1 and said[0].startswith("error: ") and "damaged checkpoint" in said[0], errors


@pytest.mark.slow
def test_workers_whose_launcher_is_killed_stop_with_a_checkpoint(tmp_path):
    config = signaling_config(tmp_path)
    config_data = json.loads(config.read_text())
    config_data["data_loader"] = {"type": "fault_injection:SleepyDigitsDataLoader", "args": {"batch_size": 32, "delay": 0.004}}
    config_data["trainer"].update(epochs=20, log_step=1)
    config = write_config(tmp_path, config_data, "long.json")
    launcher = popen("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", "-c", config, "--run-id", "orphan", "--trust-checkpoint")
    log = tmp_path / "saved" / "tiny" / "orphan" / "train.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and " step " in log.read_text()):
        time.sleep(0.05)
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == launcher.pid]
    assert len(workers) == 2
    launcher.kill()
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and _parent(Path(f"/proc/{pid}")) is not None for pid in workers):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() and _parent(Path(f"/proc/{pid}")) is not None for pid in workers), "workers outlived their launcher"
    assert "stopped by SIGTERM; resume with" in log.read_text()  # each worker stopped at a step, with a checkpoint
    state = torch.load(log.parent / "checkpoints" / "last.pth", weights_only=True)
    assert state["progress"]["global_step"] > 0


def _parent(proc: Path) -> int | None:
    """The parent pid of a live process (None once it is a zombie or gone)."""
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[1])
