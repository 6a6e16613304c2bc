"""The MNIST example (``configs/mnist.json``, ``MnistDataLoader``, ``LeNet``) on IDX files written
here, and a victoresque/pytorch-template config ported to it. It leaves with the example."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, check_passes_base_arguments_on, example_or_skip, run_here, write_config

example_or_skip("MNIST", "data_loader:MnistDataLoader", "model:LeNet", "model.metric:Accuracy", "model.metric:top_k_acc")  # what it uses of the files a user rewrites first

from data_loader import MnistDataLoader  # noqa: E402


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's IDX format: big-endian magic, dimensions, then uint8 data."""
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(labels)) + labels.tobytes())


@pytest.mark.slow
def make_mnist(tmp_path: Path) -> Path:
    """A tiny MNIST in IDX files (120 training, 40 test images) under ``tmp_path/data``."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 120), ("t10k", 40)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = (rng.random((count, 28, 28)) * 40).astype(np.uint8)
        for i, label in enumerate(labels):  # a bright square whose position encodes the label
            images[i, 2 + 2 * label : 8 + 2 * label, 4:20] = 255
        write_idx(raw, prefix, images, labels)
    return tmp_path / "data"


def test_mnist_config_trains_on_generated_idx_files(tmp_path):
    make_mnist(tmp_path)
    config = json.loads((ROOT / "configs" / "mnist.json").read_text())
    config["trainer"].update(save_dir=str(tmp_path / "saved"), epochs=2, tensorboard=False)
    path = write_config(tmp_path, config)
    overrides = (f"data_loader.args.data_dir={tmp_path / 'data'}", "data_loader.args.download=false", "data_loader.args.num_workers=0")
    result = run_here("train.py", "-c", str(path), "--run-id", "idx", *overrides)
    assert result.returncode == 0, result.stderr
    assert "108 training samples, 12 validation samples" in result.stdout
    test = run_here("test.py", "-r", str(tmp_path / "saved" / "mnist_lenet" / "idx" / "checkpoints" / "last.pth"), *overrides)
    assert test.returncode == 0, test.stderr
    assert json.loads((tmp_path / "saved" / "mnist_lenet" / "idx" / "test_metrics.json").read_text())["samples"] == 40


@pytest.mark.slow
def test_missing_mnist_offline_is_a_one_line_error(tmp_path):
    config = json.loads((ROOT / "configs" / "mnist.json").read_text())
    config["trainer"]["save_dir"] = str(tmp_path / "saved")
    path = write_config(tmp_path, config)
    result = run_here("train.py", "-c", str(path), f"data_loader.args.data_dir={tmp_path / 'nothing'}", "data_loader.args.download=false")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "data_loader.args.data_dir: MNIST is not in" in result.stderr
    assert not (tmp_path / "saved").exists()


# victoresque/pytorch-template's own config.json, as a user of that template has it
PYTORCH_TEMPLATE_CONFIG = {
    "name": "Mnist_LeNet",
    "n_gpu": 1,
    "arch": {"type": "MnistModel", "args": {}},
    "data_loader": {
        "type": "MnistDataLoader",
        "args": {"data_dir": "data/", "batch_size": 128, "shuffle": True, "validation_split": 0.1, "num_workers": 2},
    },
    "optimizer": {"type": "Adam", "args": {"lr": 0.001, "weight_decay": 0, "amsgrad": True}},
    "loss": "nll_loss",
    "metrics": ["accuracy", "top_k_acc"],
    "lr_scheduler": {"type": "StepLR", "args": {"step_size": 50, "gamma": 0.1}},
    "trainer": {
        "epochs": 100,
        "save_dir": "saved/",
        "save_period": 1,
        "verbosity": 2,
        "monitor": "min val_loss",
        "early_stop": 10,
        "tensorboard": True,
    },
}


@pytest.mark.slow
def test_a_pytorch_template_config_runs_once_its_classes_are_ported(tmp_path):
    """Its MnistModel is this template's LeNet; n_gpu is accepted with a note naming what replaces it."""
    data = make_mnist(tmp_path)
    path = write_config(tmp_path, PYTORCH_TEMPLATE_CONFIG)
    overrides = (
        "arch.type=LeNet",
        f"data_loader.args.data_dir={data}",
        "data_loader.args.download=false",
        "data_loader.args.num_workers=0",
    )
    result = run_here(
        "train.py", "-c", str(path), "--run-id", "ported", *overrides, f"trainer.save_dir={tmp_path / 'saved'}", "trainer.epochs=2"
    )
    assert result.returncode == 0, result.stderr
    assert "n_gpu is not used here: set device" in result.stdout and "torchrun --nproc_per_node=N" in result.stdout
    rows = [json.loads(line) for line in (tmp_path / "saved" / "Mnist_LeNet" / "ported" / "metrics.jsonl").read_text().splitlines()]
    assert {"accuracy", "top_k_acc", "val_accuracy", "val_top_k_acc"} <= set(rows[-1])


def test_the_loader_passes_base_data_loader_arguments_on():
    check_passes_base_arguments_on(MnistDataLoader)
