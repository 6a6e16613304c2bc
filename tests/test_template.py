"""The runnable template: a tiny end-to-end run, the run directory, the fixed splits,
sample-weighted metrics, and the MNIST loader on IDX files written here."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, run_here, run_script, tiny_config, write_config

from data_loader.data_loaders import DigitsDataLoader, digits_dataset
from model.metric import accuracy
from trainer import Evaluator


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("digits")
    config = write_config(tmp_path, tiny_config(tmp_path, full_metrics=True, epochs=3, save_period=2, tensorboard=True))
    result = run_script("train.py", "-c", str(config), "--run-id", "e2e")
    assert result.returncode == 0, result.stderr
    return tmp_path / "saved" / "tiny" / "e2e", result


@pytest.mark.slow
def test_a_run_directory_holds_everything_the_readme_lists(digits_run):
    run_dir, _ = digits_run
    assert (run_dir / "train.log").read_text().count("epoch 3") >= 1
    assert json.loads((run_dir / "config.json").read_text())["trainer"]["epochs"] == 3
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    listed = {"epoch", "loss", "accuracy", "top_k_acc", "f1", "auroc", "confusion", "samples_per_sec", "data_wait", "lr"}
    assert listed | {"val_loss", "val_accuracy", "val_top_k_acc", "val_f1", "val_auroc", "val_confusion"} == set(rows[0])
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "manifest.json").read_text())["config_hash"]
    assert {p.name for p in run_dir.iterdir()} <= {"config.json", "manifest.json", "git.diff", "train.log", "metrics.jsonl", "split.json", "checkpoints", ".lock"} | {
        p.name for p in run_dir.glob("events.out.tfevents.*")
    }
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pth", "epoch-2.pth", "last.pth"]


@pytest.mark.slow
def test_test_py_evaluates_the_held_out_split_without_a_new_run(digits_run, tmp_path):
    run_dir, _ = digits_run
    before = sorted(p.name for p in run_dir.parent.iterdir())
    result = run_here("test.py", "-r", str(run_dir / "checkpoints" / "best.pth"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert metrics["samples"] == 359 and 0.5 < metrics["accuracy"] <= 1.0
    assert sorted(p.name for p in run_dir.parent.iterdir()) == before
    out = tmp_path / "elsewhere.json"
    assert run_here("test.py", "-r", str(run_dir / "checkpoints" / "last.pth"), "--out", str(out)).returncode == 0
    assert json.loads(out.read_text())["epoch"] == 3


def test_digits_splits_are_fixed_and_disjoint():
    train, test = digits_dataset(True), digits_dataset(False)
    assert (len(train), len(test)) == (1438, 359)
    seen = {tuple(x.flatten().tolist()) for x in train.tensors[0]}
    overlap = sum(tuple(x.flatten().tolist()) in seen for x in test.tensors[0])
    assert overlap <= 2  # load_digits holds a couple of pixel-identical images; the split itself is disjoint
    assert torch.equal(digits_dataset(False).tensors[1], test.tensors[1])  # the same test split every time
    first = DigitsDataLoader(validation_split=0.15)
    again = DigitsDataLoader(validation_split=0.15)
    assert first.valid_subset.indices == again.valid_subset.indices  # its own seeded generator
    torch.manual_seed(123)  # the global seed does not move the split
    assert DigitsDataLoader(validation_split=0.15).valid_subset.indices == first.valid_subset.indices
    assert set(first.valid_subset.indices).isdisjoint(first.dataset.indices)
    assert len(first.valid_subset) == round(1438 * 0.15) and len(DigitsDataLoader(validation_split=100).valid_subset) == 100
    assert DigitsDataLoader(validation_split=0.15, split_seed=1).valid_subset.indices != first.valid_subset.indices


def test_epoch_metrics_are_weighted_by_samples_not_batches():
    """359 test samples in batches of 100 (last batch 59): the epoch value is the exact fraction."""
    loader = DigitsDataLoader(batch_size=100, training=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.manual_seed(0)
    evaluator = Evaluator(model, torch.nn.functional.cross_entropy, {"accuracy": accuracy}, torch.device("cpu"))
    values = evaluator.evaluate(loader)
    images, labels = loader.dataset.tensors
    with torch.no_grad():
        logits = model(images)
    assert values["accuracy"] == pytest.approx((logits.argmax(1) == labels).double().mean().item(), abs=1e-7)
    assert values["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    batch_means = [accuracy(model(x), y).item() for x, y in loader]
    assert values["accuracy"] != pytest.approx(sum(batch_means) / len(batch_means), abs=1e-7)


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


def test_saved_is_an_empty_placeholder_in_git():
    assert (ROOT / "saved" / ".gitkeep").exists()
    ignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "/saved/*" in ignore and "!/saved/.gitkeep" in ignore


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
    "trainer": {"epochs": 100, "save_dir": "saved/", "save_period": 1, "verbosity": 2, "monitor": "min val_loss", "early_stop": 10, "tensorboard": True},
}


@pytest.mark.slow
def test_a_pytorch_template_config_runs_once_its_classes_are_ported(tmp_path):
    """Its MnistModel is this template's LeNet; n_gpu is accepted with a note naming what replaces it."""
    data = make_mnist(tmp_path)
    path = write_config(tmp_path, PYTORCH_TEMPLATE_CONFIG)
    overrides = ("arch.type=LeNet", f"data_loader.args.data_dir={data}", "data_loader.args.download=false", "data_loader.args.num_workers=0")
    result = run_here("train.py", "-c", str(path), "--run-id", "ported", *overrides, f"trainer.save_dir={tmp_path / 'saved'}", "trainer.epochs=2")
    assert result.returncode == 0, result.stderr
    assert "n_gpu is not used here: set device" in result.stdout and "torchrun --nproc_per_node=N" in result.stdout
    rows = [json.loads(line) for line in (tmp_path / "saved" / "Mnist_LeNet" / "ported" / "metrics.jsonl").read_text().splitlines()]
    assert {"accuracy", "top_k_acc", "val_accuracy", "val_top_k_acc"} <= set(rows[-1])
