"""The VAE example (configs/vae.json, model/vae.py): a subclass in the project, a loss with inputs, a
dict output; it resumes, tests and predicts. It leaves with the example."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, example_or_skip, metric_rows
from helpers import run_quiet as run

example_or_skip("VAE", "data_loader:DigitsDataLoader")  # what it uses of the files a user rewrites first

from app.config import Config  # noqa: E402
from app.prediction_files import read_predictions  # noqa: E402


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["model"]


# -- the shipped VAE: a subclass in the project, a loss with inputs, a dict output ------------------------


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("vae")
    overrides = [f"trainer.save_dir={tmp}", "trainer.epochs=2", "trainer.tensorboard=false", "trainer.args.kl_warmup_epochs=2"]
    assert run("train", "-c", ROOT / "configs" / "vae.json", "--run-id", "vae", *overrides) == 0
    return tmp / "digits_vae" / "vae"


def test_the_vae_resumes_tests_and_predicts_one_array_per_field_in_data_set_order(vae_run, tmp_path):
    checkpoint = vae_run / "checkpoints" / "best.pth"
    rows = metric_rows(vae_run)
    assert [row["epoch"] for row in rows] == [1, 2] and rows[1]["val_loss"] < rows[0]["val_loss"] and "val_kl" in rows[1]
    assert run("test", "-r", checkpoint, "--out", tmp_path / "test.json") == 0
    results = json.loads((tmp_path / "test.json").read_text())
    assert results["samples"] == 359 and results["loss"] > 0 and results["kl"] > 0
    assert run("predict", "-r", checkpoint, "--out", tmp_path / "p.npz") == 0
    arrays = read_predictions(tmp_path / "p.npz")
    assert {key: arrays[key].shape for key in arrays} == {
        "index": (359,),
        "target": (359,),
        "recon": (359, 1, 8, 8),
        "mu": (359, 8),
        "logvar": (359, 8),
    }
    assert (arrays["index"] == np.arange(359)).all()

    config = Config.from_dict(torch.load(checkpoint, weights_only=True)["config"], "checkpoint", trusted=False)
    model = config.init_obj("arch")
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    images, _ = config.init_obj("data_loader", training=False).dataset.tensors
    with torch.no_grad():
        expected = model.eval()(images[:50])
    assert np.allclose(arrays["mu"][:50], expected["mu"].numpy(), atol=1e-6) and np.allclose(
        arrays["recon"][:50], expected["recon"].numpy(), atol=1e-6
    )

    assert run("predict", "-r", checkpoint, "--out", tmp_path / "mu.csv", "--fields", "logvar,mu") == 0
    header = (tmp_path / "mu.csv").read_text().splitlines()[0].split(",")
    assert header == ["index", "target", *(f"logvar_{i}" for i in range(8)), *(f"mu_{i}" for i in range(8))]
    assert run("predict", "-r", checkpoint, "--out", tmp_path / "x.jsonl", "--fields", "sigma") == 2
    assert not list(tmp_path.glob(".x.jsonl*")) and not (tmp_path / "x.jsonl").exists()

    assert run("train", "-r", vae_run / "checkpoints" / "last.pth", "trainer.epochs=3") == 0  # a subclass in model/: no flag needed
    assert [row["epoch"] for row in metric_rows(vae_run)] == [1, 2, 3]
