"""Shared test helpers: run the entry scripts for real, in a subprocess or in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from more threads, and OpenMP threads spinning against other test
# processes on CI's 2 cores make in-process runs many times slower.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


def run_script(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the project root; returns the completed process (output captured)."""
    # One thread per process: the models are tiny and parallel test processes share 2 cores.
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def tiny_config(tmp_path: Path, **trainer) -> dict:
    """The default digits experiment, shrunk to run in seconds, writing under ``tmp_path``."""
    config = json.loads((ROOT / "config.json").read_text())
    config["trainer"].update({"epochs": 2, "save_dir": str(tmp_path / "saved"), "tensorboard": False, "early_stop": 0}, **trainer)
    config["data_loader"]["args"]["batch_size"] = 64
    return config


def write_config(tmp_path: Path, config: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def build_trainer(tmp_path: Path, config: dict, *overrides: str, run_id: str = "run"):
    """(trainer, run_dir) built in-process by train.py's own ``build_trainer``, ready to ``train()``."""
    import train

    path = write_config(tmp_path, config, f"{run_id}.json")
    return train.build_trainer(train.parse_args(["-c", str(path), "--run-id", run_id, *overrides]))


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def root() -> Path:
    return ROOT
