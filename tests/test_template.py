"""The runnable template: a tiny end-to-end run, the run directory, the fixed splits and
sample-weighted metrics (on the engine tests' fixtures; the MNIST example's tests are in
``tests/examples/test_mnist.py``)."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.data import TinyDataLoader as DigitsDataLoader
from fixtures.data import tiny_dataset as digits_dataset
from fixtures.metric import accuracy
from helpers import ROOT, run_here, run_script, tiny_config, write_config

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


def test_saved_is_an_empty_placeholder_in_git():
    assert (ROOT / "saved" / ".gitkeep").exists()
    ignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "/saved/*" in ignore and "!/saved/.gitkeep" in ignore
