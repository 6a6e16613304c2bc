"""What a run records beside its metrics: manifest.json, where the time goes (data_wait), a profiler trace."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from helpers import ROOT, build_trainer, metric_rows, tiny_config


def test_data_wait_tells_a_slow_data_loader_from_in_memory_data(tmp_path, capsys):
    sleepy = tiny_config(tmp_path, epochs=1, limit_batches=3)
    sleepy["data_loader"] = {"type": "fault_injection:SleepyDigitsDataLoader", "args": {"batch_size": 64, "delay": 0.002}}
    trainer, run_dir = build_trainer(tmp_path, sleepy, run_id="sleepy")
    trainer.train()
    assert metric_rows(run_dir)[0]["data_wait"] >= 0.8
    assert capsys.readouterr().out.count("raise data_loader.args.num_workers") == 1  # the one-time hint names the knobs
    fast, fast_dir = build_trainer(tmp_path, tiny_config(tmp_path, epochs=1), run_id="fast")  # digits in memory
    fast.train()
    assert metric_rows(fast_dir)[0]["data_wait"] < 0.5


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("records")
    config = tiny_config(tmp_path, epochs=2, limit_batches=6, profile={"wait": 1, "warmup": 1, "active": 2})
    trainer, run_dir = build_trainer(tmp_path, config)
    trainer.train()
    import train

    argv = ["-r", str(run_dir / "checkpoints" / "last.pth"), "trainer.epochs=3", "trainer.profile=null"]
    session = train.Session(train.request_of(train.parse_args(argv), argv), train.STOP)
    session.prepare()
    session.trainer.train()
    return run_dir


def test_manifest_holds_the_command_git_packages_and_data(recorded):
    run_dir = recorded
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "--run-id run" in manifest["command"] and manifest["config_hash"]
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if git.returncode != 0:  # a project made by new_project.py before its first commit
        assert manifest["git"] is None
    else:
        assert manifest["git"]["commit"] == git.stdout.strip() and isinstance(manifest["git"]["dirty"], bool)
        if manifest["git"]["dirty"]:
            assert (run_dir / manifest["git"]["diff"]).read_text().startswith("diff --git")
    assert manifest["packages"]["torch"] == torch.__version__.split("+")[0] and manifest["torch"] == torch.__version__
    assert manifest["world_size"] == 1 and manifest["devices"] == ["cpu"] and manifest["seeds"]["config"] == 0
    assert manifest["data"]["train"]["samples"] == 1222 and manifest["data"]["valid"]["samples"] == 216
    assert len(manifest["data"]["train"]["hash"]) == 16
    resume = manifest["resumes"][0]
    assert resume["checkpoint"].endswith("last.pth") and "trainer.epochs=3" in resume["command"]


def test_the_profiler_writes_a_trace_of_its_window(recorded):
    run_dir = recorded
    traces = list((run_dir / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any("ProfilerStep" in event.get("name", "") for event in events)


def test_the_runs_table_reads_the_config_of_the_latest_resume(tmp_path):
    """A run resumed with trainer.epochs=3 plans 3 epochs: runs.py reads config-resume-N.json, not the first config."""
    from app.run_records import read_run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = tiny_config(tmp_path, epochs=2)
    (run_dir / "config.json").write_text(json.dumps(config))
    for number, epochs in ((1, 3), (2, 5), (10, 4)):  # numbered in order: 10 is the latest, not 2
        config["trainer"]["epochs"] = epochs
        (run_dir / f"config-resume-{number}.json").write_text(json.dumps(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_loss": 1.0 / e}) + "\n" for e in (1, 2, 3)))
    assert read_run(run_dir).epochs_planned == 4
