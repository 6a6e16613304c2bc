"""FSDP2 through real ``torchrun`` on CPU (gloo): sharded training and sharded checkpoints.

- an fsdp run ends where a ddp run ends (AdamW, 16 steps, within 1e-5), EMA weights too;
- one epoch plus a resume equals two epochs, bitwise, EMA weights too (they are sharded like the weights);
- a checkpoint written by 2 processes resumes in 1, and test.py reads it in one process;
- torch's ``dcp_to_torch`` makes a weights file that loads with ``weights_only=True`` and holds the same weights;
- SIGKILL while checkpointing every step leaves the previous checkpoint loadable;
- a snapshot whose metadata names ``os.system`` is refused and runs nothing.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TESTS_ENV, kill_tree, metric_rows, run_here, run_script, tiny_config, write_config

from utils.checkpoints import load_checkpoint
from utils.checkpoints.files import with_checksums
from utils.checkpoints.snapshots import file_checksum
from utils.errors import UserError

pytestmark = pytest.mark.slow
ENV = {**TESTS_ENV, "OMP_NUM_THREADS": "1"}
TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


def torchrun(*args: str, env: dict | None = None):
    return run_script(*TORCHRUN, "train.py", *args, env={**ENV, **(env or {})}, timeout=600)


def experiment(tmp_path: Path, **trainer) -> Path:
    config = tiny_config(tmp_path, **{"epochs": 2, "limit_batches": 8, "save_period": 1, "ema_decay": 0.9, **trainer})
    config["arch"]["args"]["dropout"] = 0.3
    config["optimizer"] = {"type": "AdamW", "args": {"lr": 0.002, "weight_decay": 0.01}}
    config["data_loader"]["args"]["batch_size"] = 32
    return write_config(tmp_path, config)


def weights(path: Path, ema: bool = False) -> dict:
    return load_checkpoint(path).weights(ema=ema)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fsdp")
    config = experiment(tmp_path)
    for run_id, strategy in (("ddp", "ddp"), ("fsdp", "fsdp")):
        result = torchrun("-c", str(config), "--run-id", run_id, f"trainer.strategy={strategy}")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = tmp_path / "saved" / "tiny"
    shutil.copytree(saved / "fsdp", saved / "split", symlinks=True)  # its first epoch, resumed: the run as a preemption leaves it
    resumed = torchrun("-r", str(saved / "split" / "checkpoints" / "epoch-1.dcp"), "trainer.epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return tmp_path, tmp_path / "saved" / "tiny"


def test_fsdp_ends_where_ddp_ends_after_16_adamw_steps(runs):
    _, saved = runs
    for ema in (False, True):
        ddp, fsdp = weights(saved / "ddp" / "checkpoints" / "last.pth", ema), weights(saved / "fsdp" / "checkpoints" / "last.dcp", ema)
        assert ddp.keys() == fsdp.keys()
        for key in ddp:
            torch.testing.assert_close(fsdp[key], ddp[key], rtol=0, atol=1e-5, msg=key)
    raw, averaged = weights(saved / "fsdp" / "checkpoints" / "last.dcp"), weights(saved / "fsdp" / "checkpoints" / "last.dcp", True)
    assert any(not torch.equal(raw[key], averaged[key]) for key in raw)
    assert load_checkpoint(saved / "fsdp" / "checkpoints" / "last.dcp").data["progress"]["global_step"] == 16


def test_one_epoch_plus_resume_equals_two_epochs_bitwise(runs):
    _, saved = runs
    straight, split = saved / "fsdp", saved / "split"
    for ema in (False, True):
        a, b = weights(straight / "checkpoints" / "last.dcp", ema), weights(split / "checkpoints" / "last.dcp", ema)
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert metric_rows(straight, timing=False) == metric_rows(split, timing=False)


def test_the_snapshot_layout_and_links(runs):
    _, saved = runs
    folder = saved / "fsdp" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.dcp", "epoch-1.dcp", "epoch-2.dcp", "last.dcp", "snapshots"]
    assert (folder / "last.dcp").resolve() == (folder / "epoch-2.dcp").resolve()
    snapshot = (folder / "last.dcp").resolve()
    assert {p.name for p in snapshot.iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt", "rank-0.pt", "rank-1.pt"}
    assert len(list((folder / "snapshots").iterdir())) == 2  # epochs 1 and 2; nothing unreferenced is kept


def test_a_two_process_checkpoint_resumes_in_one_process_and_test_py_reads_it(runs):
    tmp_path, saved = runs
    shutil.copytree(saved / "fsdp", saved / "single", symlinks=True)
    resumed = run_here("train.py", "-r", str(saved / "single" / "checkpoints" / "epoch-1.dcp"), "trainer.epochs=2", env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint written by 2 process(es), resuming with 1" in resumed.stdout
    assert [row["epoch"] for row in metric_rows(saved / "single")] == [1, 2]
    out = tmp_path / "test.json"
    tested = run_here("test.py", "-r", str(saved / "fsdp" / "checkpoints" / "best.dcp"), "--out", str(out), env=ENV)
    assert tested.returncode == 0, tested.stderr
    assert '"samples": 359' in out.read_text()


def test_dcp_to_torch_output_loads_with_weights_only_and_is_accepted(runs):
    tmp_path, saved = runs
    snapshot, converted = saved / "fsdp" / "checkpoints" / "last.dcp", tmp_path / "converted.pth"
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(snapshot, converted)  # what `python -m torch.distributed.checkpoint.format_utils dcp_to_torch` runs
    state = torch.load(converted, weights_only=True)
    original = weights(snapshot)
    assert all(torch.equal(state["model"][key], value) for key, value in original.items())
    config = saved / "fsdp" / "config.json"
    tested = run_here("test.py", "-r", str(converted), "-c", str(config), "--out", str(tmp_path / "c.json"), env=ENV)
    assert tested.returncode == 0, tested.stderr
    tuned = run_here("train.py", "-r", str(converted), "-c", str(config), "--run-id", "tuned", "trainer.epochs=1", env=ENV)
    assert tuned.returncode == 0, tuned.stderr


def test_sigkill_while_saving_every_step_leaves_the_previous_snapshot_loadable(tmp_path, rng):
    config = experiment(tmp_path, save_every_n_steps=1, epochs=50)
    run_dir = tmp_path / "saved" / "tiny" / "killed"
    last = run_dir / "checkpoints" / "last.dcp"
    command = [sys.executable, *TORCHRUN, "train.py", "-c", str(config), "--run-id", "killed", "trainer.strategy=fsdp"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.2, 1.5))
    kill_tree(process.pid, signal.SIGKILL)  # torchrun and both ranks, at once
    process.wait(timeout=60)
    checkpoint = load_checkpoint(last)  # whatever the moment of the kill, the link points at a whole snapshot
    assert checkpoint.data["progress"]["global_step"] >= 1
    assert all(torch.isfinite(value).all() for value in weights(last).values())
    progress = checkpoint.data["progress"]
    one_more = progress["epoch"] + (0 if progress["batch_in_epoch"] else 1)  # finish the epoch it was in, or train one more
    resumed = torchrun("-r", str(last), f"trainer.epochs={one_more}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    linked = {path.resolve() for path in last.parent.glob("*.dcp")}
    assert set((last.parent / "snapshots").iterdir()) <= linked  # what the kill left half-written is gone


def resign(snapshot: Path) -> None:
    """Make a snapshot's checksums match its edited ``.metadata``, as a crafted one would."""
    meta = torch.load(snapshot / "meta.pt", weights_only=True)
    meta["files"][".metadata"] = file_checksum(snapshot / ".metadata")
    torch.save(with_checksums({k: v for k, v in meta.items() if k != "checksums"}), snapshot / "meta.pt")


def test_a_snapshot_naming_os_system_is_refused_and_runs_nothing(runs, tmp_path):
    _, saved = runs
    evil = tmp_path / "evil.dcp"
    shutil.copytree((saved / "fsdp" / "checkpoints" / "last.dcp").resolve(), evil)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (evil / ".metadata").write_bytes(pickle.dumps(Payload()))
    resign(evil)  # crafted, not damaged: the checksums say nothing, the allow-list must
    with pytest.raises(UserError, match=r"refused posix.system|not part of a DCP"):
        load_checkpoint(evil).weights()
    assert not marker.exists()


def test_a_damaged_snapshot_is_one_line_naming_its_part_before_anything_is_allocated(runs, tmp_path):
    _, saved = runs
    snapshot = tmp_path / "snapshot"
    shutil.copytree((saved / "fsdp" / "checkpoints" / "last.dcp").resolve(), snapshot)
    shard = snapshot / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the second process's shards: DCP itself would load it
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"the part '__1_0.distcp' does not match its checksum"):
        load_checkpoint(snapshot)
    shutil.rmtree(snapshot)
    shutil.copytree((saved / "fsdp" / "checkpoints" / "last.dcp").resolve(), snapshot)
    metadata = pickle.loads((snapshot / ".metadata").read_bytes())
    name = next(key for key, item in metadata.state_dict_metadata.items() if hasattr(item, "size") and key.startswith("model."))
    metadata.state_dict_metadata[name].size = torch.Size([1 << 20, 1 << 20])  # 4 TB of float32 claimed
    (snapshot / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(UserError, match=r"the part '.metadata' does not match its checksum"):
        load_checkpoint(snapshot)
    resign(snapshot)  # crafted, not damaged: the metadata's claims are checked against the files
    with pytest.raises(UserError, match=r"a damaged snapshot \(its metadata claims 4,398,046,511,104 bytes"):
        load_checkpoint(snapshot).weights()
