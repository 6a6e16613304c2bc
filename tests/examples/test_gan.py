"""The GAN example (configs/gan.json, model/gan.py): two optimizers declared in the config, the automatic
multi-loss step, bf16 autocast with accumulation, an exact resume from a SIGTERM mid-epoch, samples in
TensorBoard and through ``predict.py``. It leaves with the example."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, build_trainer, example_or_skip, metric_rows
from helpers import run_quiet as run

example_or_skip("digits", "data_loader:DigitsDataLoader")  # the images the GAN learns

from app.prediction_files import read_predictions  # noqa: E402
from model.gan import GAN  # noqa: E402

STOP_AT = 25  # an engine step inside epoch 3 (10 steps an epoch with accumulate_steps=2)


def gan_config(tmp_path: Path, epochs: int, tensorboard: bool = False) -> dict:
    config = json.loads((ROOT / "configs" / "gan.json").read_text())
    config["device"] = "cpu"
    config["trainer"].update(epochs=epochs, save_dir=str(tmp_path / "saved"), tensorboard=tensorboard, amp="bf16", accumulate_steps=2)
    return config


def parts(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True, map_location="cpu")


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """configs/gan.json trained 4 epochs in one go (bf16, accumulate_steps=2, TensorBoard on): its run directory."""
    tmp = tmp_path_factory.mktemp("gan")
    trainer, run_dir = build_trainer(tmp, gan_config(tmp, epochs=4, tensorboard=True), run_id="straight")
    trainer.train()
    return run_dir


def test_the_gan_trains_both_optimizers_and_resumes_bitwise_from_a_sigterm_mid_epoch(straight, tmp_path):
    rows = metric_rows(straight)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    for row in rows:  # each optimizer's loss and rate is a column; the epoch's loss is their sum
        assert row["loss"] == pytest.approx(row["loss_discriminator"] + row["loss_generator"], rel=1e-5)
        assert row["val_loss"] == pytest.approx(row["val_loss_discriminator"] + row["val_loss_generator"], rel=1e-5)
        assert row["lr_discriminator"] == row["lr_generator"] == 0.0002
    reference = parts(straight)
    assert reference["progress"]["global_step"] == 40

    trainer, run_dir = build_trainer(tmp_path, gan_config(tmp_path, epochs=4), run_id="stopped")
    step = trainer.training_step

    def stopping_step(inputs, target):
        if trainer.global_step == STOP_AT and not trainer.in_preflight and not trainer.stop.requested:
            assert trainer.stop.installed
            os.kill(os.getpid(), signal.SIGTERM)  # a real SIGTERM: the run saves at this step and stops
        return step(inputs, target)

    trainer.training_step = stopping_step
    trainer.train()
    stopped = parts(run_dir)
    assert trainer.stopped_by == "SIGTERM" and stopped["progress"]["epoch"] == 3 and stopped["progress"]["global_step"] == STOP_AT + 1
    for child in ("generator.0.weight", "discriminator.1.weight"):  # both optimizers stepped after the stop's step
        assert not torch.equal(stopped["model"][child], reference["model"][child]), child
    assert run("train", "-r", run_dir / "checkpoints" / "last.pth") == 0
    resumed = parts(run_dir)
    for part in ("model", "optimizer", "progress", "precision"):
        assert same(resumed[part], reference[part]), part
    assert set(resumed["optimizer"]) == {"discriminator", "generator"}
    assert [row["epoch"] for row in metric_rows(run_dir)] == [1, 2, 3, 4]
    assert metric_rows(run_dir, timing=False) == metric_rows(straight, timing=False)


def test_samples_go_to_tensorboard_and_predict_writes_one_per_row_from_seeded_noise(straight, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(straight), size_guidance={"images": 0})
    events.Reload()
    assert [event.step for event in events.Images("samples")] == [10, 20, 30, 40]
    assert (events.Images("samples")[0].width, events.Images("samples")[0].height) != (0, 0)

    checkpoint = straight / "checkpoints" / "last.pth"
    assert run("predict", "-r", checkpoint, "--out", tmp_path / "p.npz") == 0
    arrays = read_predictions(tmp_path / "p.npz")
    assert arrays["sample"].shape == (359, 1, 8, 8) and (arrays["index"] == np.arange(359)).all()

    gan = GAN(**json.loads((ROOT / "configs" / "gan.json").read_text())["arch"]["args"])
    gan.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    noise = torch.Generator().manual_seed(0)  # trainer.args.sample_seed
    z = torch.stack([torch.randn(gan.latent, generator=noise) for _ in range(359)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = gan.eval().generate(z).float()
    assert np.allclose(arrays["sample"], expected.numpy(), atol=1e-6)
    assert arrays["sample"].std(axis=0).mean() > 0  # different noise per row: different samples

    assert run("predict", "-r", checkpoint, "--out", tmp_path / "q.npz", "data_loader.args.batch_size=50") == 0
    assert np.array_equal(read_predictions(tmp_path / "q.npz")["sample"], arrays["sample"])  # the same rows whatever the batch
