"""DDP through real ``torchrun`` on CPU (gloo): the DDP parts of training, logging and preemption.

- two processes with batch B end where one process with batch 2B ends, over the same data order;
- validation metrics on an uneven split equal a single-process evaluation;
- a DDP checkpoint resumes in a single process;
- only rank 0 writes;
- SIGTERM on one rank mid-epoch stops both at the same step, and the resumed run ends where an
  uninterrupted DDP run ends.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, run_here, run_script, tiny_config, write_config

pytestmark = pytest.mark.slow
ENV = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


def experiment(tmp_path: Path, batch_size: int, dropout: float = 0.0, **trainer) -> Path:
    config = tiny_config(tmp_path, full_metrics=True, epochs=2, **trainer)  # torchmetrics states sync across ranks
    config["arch"] = {"type": "fault_injection:SignalingDigitsCNN", "args": {"num_classes": 10, "dropout": dropout}}
    config["optimizer"] = {"type": "SGD", "args": {"lr": 0.05, "momentum": 0.9}}
    # 1,438 - 157 = 1,281 training samples: drop_last keeps 1,280 both ways; 157 validation
    # samples split 79/78 over two ranks.
    config["data_loader"]["args"].update(batch_size=batch_size, validation_split=157, drop_last=True, in_memory=False)
    return write_config(tmp_path, config, f"b{batch_size}.json")


def torchrun(*args: str, env: dict | None = None):
    return run_script(*TORCHRUN, "train.py", *args, "--trust-checkpoint", env={**ENV, **(env or {})}, timeout=600)


def last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True, map_location="cpu")


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    result = torchrun("-c", str(experiment(tmp_path, 32)), "--run-id", "ddp")
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp_path / "saved" / "tiny" / "ddp", result


def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(tmp_path, ddp_run):
    ddp_dir, _ = ddp_run
    single = run_here("train.py", "-c", str(experiment(tmp_path, 64)), "--run-id", "single", "--trust-checkpoint", env=ENV)
    assert single.returncode == 0, single.stderr
    single_dir = tmp_path / "saved" / "tiny" / "single"
    a, b = last(ddp_dir), last(single_dir)
    assert a["world_size"] == 2 and b["world_size"] == 1
    assert not any(key.startswith("module.") for key in a["model"])
    for key in b["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    for ddp_row, single_row in zip(rows(ddp_dir), rows(single_dir), strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_top_k_acc"):
            assert ddp_row[key] == pytest.approx(single_row[key], rel=1e-4, abs=1e-6), key


def test_validation_on_an_uneven_split_equals_single_process_evaluation(tmp_path, ddp_run):
    """Evaluate the DDP run's weights on the same 157 samples in one process: same numbers."""
    ddp_dir, _ = ddp_run
    sys.path.insert(0, str(ROOT))
    from app.config import Config, build_loss, build_metrics
    from trainer import Evaluator

    state = last(ddp_dir)
    config = Config.from_dict(state["config"], "checkpoint")
    loader = config.init_obj("data_loader").split_validation()
    assert len(loader.dataset) == 157
    model = config.init_obj("arch")
    model.load_state_dict(state["model"])
    values = Evaluator(model, build_loss(config), build_metrics(config), torch.device("cpu")).evaluate(loader)
    logged = rows(ddp_dir)[-1]
    assert logged["val_loss"] == pytest.approx(values["loss"], rel=1e-6)
    assert logged["val_accuracy"] == pytest.approx(values["accuracy"], rel=1e-6)
    assert round(logged["val_accuracy"] * 157) == pytest.approx(logged["val_accuracy"] * 157, abs=1e-4)  # a whole count


def test_only_rank_zero_writes(ddp_run):
    ddp_dir, result = ddp_run
    assert sorted(p.name for p in ddp_dir.parent.iterdir()) == ["ddp"]
    assert len(list(ddp_dir.glob("events.out.tfevents.*"))) <= 1
    assert len(rows(ddp_dir)) == 2
    log = (ddp_dir / "train.log").read_text()
    assert "world size 2, strategy ddp, batch 32 per process = global batch 64" in log
    assert not re.search(r"\[rank 1\].*INFO", result.stdout)
    assert "torchrun --standalone --nproc_per_node=2 train.py -r" in log


def test_ddp_checkpoint_resumes_in_a_single_process(ddp_run):
    ddp_dir, _ = ddp_run
    resumed = run_here("train.py", "-r", str(ddp_dir / "checkpoints" / "last.pth"), "trainer.epochs=3", "--trust-checkpoint", env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming with 1" in resumed.stdout
    assert [row["epoch"] for row in rows(ddp_dir)] == [1, 2, 3]
    assert last(ddp_dir)["world_size"] == 1


def test_sigterm_on_one_rank_mid_epoch_resumes_exactly_under_ddp(tmp_path):
    config = experiment(tmp_path, 32, dropout=0.3)
    straight = torchrun("-c", str(config), "--run-id", "straight")
    assert straight.returncode == 0, straight.stderr
    stopped = torchrun("-c", str(config), "--run-id", "stopped", env={"SIGNAL_AT_BATCH": "28", "SIGNAL_RANK": "0"})
    assert stopped.returncode != 0
    run_dir = tmp_path / "saved" / "tiny" / "stopped"
    state = last(run_dir)
    assert (state["progress"]["epoch"], state["progress"]["batch_in_epoch"], state["world_size"]) == (2, 7, 2)
    assert f"stopped by {signal.SIGTERM.name}" in stopped.stdout
    resumed = torchrun("-r", str(run_dir / "checkpoints" / "last.pth"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming epoch 2 at batch 7 of 20" in resumed.stdout
    reference = last(tmp_path / "saved" / "tiny" / "straight")
    for key, value in reference["model"].items():
        torch.testing.assert_close(last(run_dir)["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert rows(run_dir)[-1]["loss"] == pytest.approx(rows(tmp_path / "saved" / "tiny" / "straight")[-1]["loss"], rel=1e-5)
