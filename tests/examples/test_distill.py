"""The distillation example (configs/distill.json, model/distill.py): a student trained on the labels'
cross-entropy mixed with the KL divergence to a frozen teacher loaded from a run's checkpoint by
``app.loading.load_model``. It leaves with the example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, build_trainer, example_or_skip, metric_rows
from helpers import run_quiet as run

example_or_skip("digits", "model:DigitsCNN", "model:MLP", "data_loader:DigitsDataLoader", "model.loss:nll_loss", "model.metric:Accuracy", "configs/digits.yaml")  # the teacher and the student's data

from app.loading import file_digest  # noqa: E402
from model.model import DigitsCNN  # noqa: E402

QUICK = ["trainer.tensorboard=false", "trainer.limit_batches=4", "device=cpu"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """The digits experiment trained two tiny epochs: its run directory (epoch-1.pth and best.pth differ)."""
    tmp = tmp_path_factory.mktemp("teacher")
    overrides = [f"trainer.save_dir={tmp}", "trainer.epochs=2", "trainer.save_period=1", *QUICK]
    assert run("train", "-c", ROOT / "configs" / "digits.yaml", "--run-id", "teacher", *overrides) == 0
    return tmp / "digits_cnn" / "teacher"


def student_config(tmp_path: Path, teacher_file: Path) -> dict:
    config = json.loads((ROOT / "configs" / "distill.json").read_text())
    config["device"] = "cpu"
    config["trainer"]["args"]["teacher"] = str(teacher_file)
    config["trainer"].update(epochs=1, save_dir=str(tmp_path / "saved"), tensorboard=False, limit_batches=4)
    return config


def test_the_student_learns_from_a_frozen_teacher_named_in_the_manifest(teacher, tmp_path, capsys):
    teacher_file = teacher / "checkpoints" / "best.pth"
    saved = torch.load(teacher_file, weights_only=True)["model"]
    trainer, run_dir = build_trainer(tmp_path, student_config(tmp_path, teacher_file), run_id="student")
    trainer.train()

    assert all(torch.equal(value, saved[name]) for name, value in trainer.teacher.state_dict().items())  # frozen: unchanged
    assert not any(p.requires_grad for p in trainer.teacher.parameters()) and not trainer.teacher.training
    assert "teacher" not in json.dumps(list(torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["model"]))
    loaded = json.loads((run_dir / "manifest.json").read_text())["data"]["loaded_models"]
    assert loaded == [{"path": str(teacher_file), "sha256": file_digest(teacher_file), "weights": "raw", "epoch": 2}]
    (row,) = metric_rows(run_dir)
    assert row["kl"] >= 0 and row["ce"] > 0 and "val_loss" in row and "val_kl" not in row  # validation: the labels alone

    # The step's loss against a recomputation from the two models' weights, outside the engine.
    reference = DigitsCNN().eval()
    reference.load_state_dict(saved)
    inputs, target = next(iter(trainer.data.epoch_batches(1, 0)))
    alpha, temperature = trainer.alpha, trainer.temperature
    loss, output = trainer.training_step(inputs, target)
    student = trainer.model.module(inputs)  # the MLP's log-probabilities
    with torch.no_grad():
        taught = reference(inputs)
    soft_teacher, soft_student = F.softmax(taught / temperature, dim=1), F.log_softmax(student / temperature, dim=1)
    kl = (soft_teacher * (soft_teacher.log() - soft_student)).sum(dim=1).mean()
    ce = -F.log_softmax(student, dim=1)[torch.arange(len(target)), target].mean()
    assert torch.allclose(loss, alpha * ce + (1 - alpha) * temperature**2 * kl, rtol=1e-5, atol=1e-6)
    assert torch.equal(output, student) and 0 < alpha < 1  # both terms count

    # A resume with another teacher file is refused in one line; with the same one it continues.
    last = run_dir / "checkpoints" / "last.pth"
    capsys.readouterr()
    assert run("train", "-r", last, "trainer.epochs=2", f"trainer.args.teacher={teacher / 'checkpoints' / 'epoch-1.pth'}") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "is not the teacher this run started with" in error[0], error
    assert run("train", "-r", last, "trainer.epochs=2") == 0
    assert [row["epoch"] for row in metric_rows(run_dir)] == [1, 2]
    assert run("test", "-r", last, "--out", tmp_path / "test.json") == 0  # the labels' loss, as validation
    results = json.loads((tmp_path / "test.json").read_text())
    assert results["samples"] == 359 and 0 <= results["accuracy"] <= 1 and "kl" not in results


def test_a_missing_teacher_is_one_line_naming_the_key(tmp_path, capsys):
    config = student_config(tmp_path, tmp_path / "nowhere.pth")
    path = tmp_path / "distill.json"
    path.write_text(json.dumps(config))
    assert run("train", "-c", path) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "trainer.args.teacher:" in error[0] and "nowhere.pth does not exist" in error[0], error
