"""Targets and outputs of any structure are counted and written right (issue 38, item 1).

A two-head model with dict targets (``tests/multitask.py``) on data sets whose sizes no batch
size divides: ``test.py``'s numbers equal a per-sample recomputation made here, independently of
the engine; the epoch's sample count (behind ``samples_per_sec``) is the real one; metrics point
at one head from the config; ``predict.py`` writes every output and target field in its shape.
"""

from __future__ import annotations

import json
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import build_trainer, last_checkpoint, metric_rows, run_here
from multitask import TEST_SAMPLES, TRAIN_SAMPLES, MaskData, MultiTaskData, SequenceFirst, SequenceFirstCounted, TinySegmenter, TwoHeads

from app.prediction_files import read_predictions
from trainer.batches import BatchReader, count_samples
from utils.errors import UserError

TRUST = "--trust-checkpoint"  # the config names tests/multitask.py, outside the project's packages


def multitask_config(tmp_path, batch_size: int = 16) -> dict:
    return {
        "name": "multitask",
        "seed": 0,
        "device": "cpu",
        "arch": {"type": "multitask:TwoHeads", "args": {"hidden": 16}},
        "data_loader": {"type": "multitask:MultiTaskDataLoader", "args": {"batch_size": batch_size}},
        "loss": "multitask:multitask_loss",
        "metrics": [
            {"type": "fixtures.metric:accuracy", "output": "cls", "target": "cls", "name": "acc_cls"},
            {"type": "fixtures.metric:Accuracy", "output": "cls", "target": "cls", "name": "exact_acc"},
            {"type": "multitask:squared_error", "name": "mse"},
            {"type": "torchmetrics.regression:MeanSquaredError", "output": "reg", "target": "reg", "name": "tm_mse"},
        ],
        "optimizer": {"type": "Adam", "args": {"lr": 0.01}},
        "lr_scheduler": None,
        "trainer": {
            "type": "multitask:TermsTrainer",
            "epochs": 2,
            "save_dir": str(tmp_path / "saved"),
            "tensorboard": False,
            "monitor": "min val_loss",
            "early_stop": 0,
            "log_step": 1000,
        },
    }


@pytest.fixture(scope="module")
def multitask(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("multitask")
    trainer, run_dir = build_trainer(tmp_path, multitask_config(tmp_path), TRUST)
    trainer.train()
    return tmp_path, trainer, run_dir / "checkpoints" / "best.pth"


def independent_values(checkpoint) -> dict:
    """Loss and metrics of the test split, sample by sample, from the checkpoint's weights alone."""
    model = TwoHeads(hidden=16)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    model.eval()
    data = MultiTaskData(TEST_SAMPLES, seed=2)
    losses, correct, squares = [], 0, []
    with torch.no_grad():
        for index in range(len(data)):
            x, target = data[index]
            output = model(x.unsqueeze(0))
            losses.append(F.nll_loss(output["cls"], target["cls"].view(1)).item() + (output["reg"][0] - target["reg"]).pow(2).item())
            correct += int(output["cls"].argmax(dim=1).item() == target["cls"].item())
            squares.append((output["reg"][0] - target["reg"]).pow(2).item())
    return {"loss": sum(losses) / len(data), "exact_acc": correct / len(data), "mse": sum(squares) / len(data)}


def test_test_py_equals_a_per_sample_recomputation(multitask):
    tmp_path, _, checkpoint = multitask
    result = run_here("test.py", "-r", checkpoint, "--out", tmp_path / "test.json", TRUST)
    assert result.returncode == 0, result.stderr
    got = json.loads((tmp_path / "test.json").read_text())
    expected = independent_values(checkpoint)
    assert got["samples"] == TEST_SAMPLES
    assert got["exact_acc"] == expected["exact_acc"]  # counts: exact
    # Function metrics and the loss are float32 batch means weighted by the batch's samples: equal up to float32 rounding
    # (a mean of batch means, the old count by len(dict), is off by about 1e-2 here).
    assert got["acc_cls"] == pytest.approx(expected["exact_acc"], abs=1e-6)
    assert got["mse"] == pytest.approx(expected["mse"], rel=1e-5)
    assert got["tm_mse"] == pytest.approx(expected["mse"], rel=1e-5)  # a torchmetrics object pointed at one head
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert got["mse"] == pytest.approx(got["reg_loss"], rel=1e-6)  # self.log's values are per-sample means like the loss
    assert got["cls_loss"] + got["reg_loss"] == pytest.approx(got["loss"], rel=1e-6)


def test_logged_values_are_in_every_epoch_row(multitask):
    _, trainer, _ = multitask
    rows = [json.loads(line) for line in (trainer.run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["cls_loss"] + row["reg_loss"] == pytest.approx(row["loss"], rel=1e-6)
        assert row["val_cls_loss"] + row["val_reg_loss"] == pytest.approx(row["val_loss"], rel=1e-6)


def test_an_epoch_counts_its_real_samples(multitask):
    _, trainer, _ = multitask
    training = TRAIN_SAMPLES - round(0.2 * TRAIN_SAMPLES)
    assert trainer.epoch_samples == training  # samples_per_sec is this over the epoch's time
    row = json.loads((trainer.run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["samples_per_sec"] > 0 and 0 <= row["exact_acc"] <= 1


def test_a_resume_mid_epoch_logs_what_the_uninterrupted_run_logged(multitask, tmp_path):
    """SIGTERM in epoch 2 (batch 3 of 8), then train.py -r: the rows, self.log's values and the
    per-head metrics included, equal the uninterrupted run's (the fixture's) value for value."""
    uninterrupted = multitask[1].run.run_dir
    config = multitask_config(tmp_path)
    config["arch"] = {"type": "multitask:SignalingTwoHeads", "args": {"hidden": 16, "at": 1 + 8 + 3}}
    trainer, run_dir = build_trainer(tmp_path, config, TRUST)
    trainer.train()
    assert trainer.stopped_by == "SIGTERM" and last_checkpoint(run_dir)["progress"]["batch_in_epoch"] == 3
    result = run_here("train.py", "-r", run_dir / "checkpoints" / "last.pth", TRUST)  # the rebuilt model counts from 0: no second signal
    assert result.returncode == 0, result.stderr
    assert metric_rows(run_dir, timing=False) == metric_rows(uninterrupted, timing=False)


def test_predict_writes_output_and_target_fields_in_their_shapes(multitask):
    tmp_path, _, checkpoint = multitask
    for suffix in (".npz", ".jsonl"):
        out = tmp_path / f"predictions{suffix}"
        result = run_here("predict.py", "-r", checkpoint, "--out", out, TRUST)
        assert result.returncode == 0, result.stderr
    arrays = read_predictions(tmp_path / "predictions.npz")
    data = MultiTaskData(TEST_SAMPLES, seed=2)
    assert {key: arrays[key].shape for key in arrays} == {
        "index": (TEST_SAMPLES,),
        "target.cls": (TEST_SAMPLES,),
        "target.reg": (TEST_SAMPLES,),
        "cls": (TEST_SAMPLES, 3),
        "reg": (TEST_SAMPLES,),
    }
    assert np.array_equal(arrays["target.cls"], data.cls.numpy()) and np.array_equal(arrays["target.reg"], data.reg.numpy())
    model = TwoHeads(hidden=16)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        expected = model.eval()(data.x)
    assert np.allclose(arrays["cls"], expected["cls"].numpy(), atol=1e-6)
    rows = read_predictions(tmp_path / "predictions.jsonl")
    assert list(rows[0]) == ["index", "target.cls", "target.reg", "cls", "reg"] and len(rows) == TEST_SAMPLES


def test_a_dense_output_and_its_mask_keep_their_shapes(tmp_path):
    config = multitask_config(tmp_path)
    config.update(
        name="segment",
        arch={"type": "multitask:TinySegmenter"},
        data_loader={"type": "multitask:MaskDataLoader", "args": {"batch_size": 8}},
        loss="fixtures.metric:nll_loss",
        metrics=[{"type": "multitask:pixel_accuracy"}],
    )
    config["trainer"]["type"] = "multitask:MaskTrainer"
    config["trainer"].update(epochs=1, monitor="min loss")
    trainer, run_dir = build_trainer(tmp_path, config, TRUST)
    trainer.train()
    checkpoint = run_dir / "checkpoints" / "last.pth"
    out = tmp_path / "masks.npz"
    result = run_here("predict.py", "-r", checkpoint, "--out", out, TRUST)
    assert result.returncode == 0, result.stderr
    arrays = read_predictions(out)
    data = MaskData(21, seed=4)
    assert arrays["target"].shape == (21, 4, 4) and np.array_equal(arrays["target"], data.masks.numpy())
    assert arrays["scores"].shape == (21, 2, 4, 4) and arrays["mask"].shape == (21, 4, 4)  # MaskTrainer.predict_step's fields
    model = TinySegmenter()
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        scores = model.eval()(data.images)
    assert np.allclose(arrays["scores"], scores.numpy(), atol=1e-6) and np.array_equal(arrays["mask"], scores.argmax(dim=1).numpy())
    plain = tmp_path / "plain.npz"  # the forward alone: the (N, C, H, W) output stays 4-D
    result = run_here("predict.py", "-r", checkpoint, "--out", plain, "trainer.type=Trainer", TRUST)
    assert result.returncode == 0, result.stderr
    assert read_predictions(plain)["output"].shape == (21, 2, 4, 4)


def test_the_batch_size_rule():
    x, y = torch.ones(5, 3), torch.zeros(5)
    Pair = namedtuple("Pair", "a b")
    assert count_samples(x, {"cls": y, "reg": y}) == 5
    assert count_samples({"tokens": torch.ones(5, 7), "scale": torch.tensor(2.0)}, Pair(y, [y, "name"])) == 5
    assert count_samples(["text"] * 3, torch.zeros(3)) == 3  # inputs without tensors: the target counts
    with pytest.raises(UserError, match=r"inputs has 7, target has 5 .*batch_first=True.*batch_samples"):
        count_samples(torch.ones(7, 5, 3), y)  # sequence-first inputs
    with pytest.raises(UserError, match=r"no tensor with a batch dimension.*list \(str, str\)"):
        count_samples(["a", "b"], ["c", "d"])
    loader = SequenceFirstCounted(batch_size=16)  # the data loader's own rule, for batches the default cannot count
    inputs, target = BatchReader(torch.device("cpu"), loader)(next(iter(loader)))
    assert inputs.shape == (2, 16, 3) and BatchReader(torch.device("cpu"), loader).count(inputs, target) == 16
    with pytest.raises(UserError, match=r"inputs has 2, target.cls has 16"):
        BatchReader(torch.device("cpu"), SequenceFirst(batch_size=16)).count(inputs, target)


def test_the_preflight_puts_back_what_a_step_of_its_own_changed(tmp_path):
    """A step that steps an optimizer of its own by hand: with the pre-flight on, the run starts
    from the same weights and optimizer states as with it off (README: pre-flight changes nothing)."""
    config = multitask_config(tmp_path)
    config["trainer"]["type"] = "multitask:HandSteppingTrainer"
    started = {}
    for preflight in (True, False):
        trainer, _ = build_trainer(tmp_path, config, f"trainer.preflight={str(preflight).lower()}", TRUST, run_id=f"preflight-{preflight}")
        started[preflight] = {name: part.state_dict() for name, part in trainer.state_parts().items() if name != "monitor"}
    assert started[True]["hand"] == started[False]["hand"] == {"steps": 0}
    for name in ("model", "extra", "optimizer", "progress"):
        assert _same(started[True][name], started[False][name]), name


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def test_self_log_rejects_a_name_the_row_has_and_a_non_scalar():
    from trainer.step_log import LoggedValues

    logged = LoggedValues(torch.device("cpu"), ("acc_cls",))
    for name in ("loss", "acc_cls", "val_x", "lr"):
        with pytest.raises(UserError, match=r"self.log: .*choose another name"):
            logged.log(name, 1.0)
    with pytest.raises(UserError, match=r"self.log: 'kl' is a tensor of shape \(3,\)"):
        logged.log("kl", torch.ones(3))
    logged.log("kl", torch.tensor(2.0))
    logged.commit(3)
    logged.log("kl", 4.0)
    logged.commit(1)
    again = LoggedValues(torch.device("cpu"))
    again.load_state_dict(logged.state_dict())  # what a mid-epoch checkpoint carries
    assert logged.compute() == again.compute() == {"kl": (2.0 * 3 + 4.0) / 4}


def test_load_model_gives_a_trained_model_under_the_trust_rule_and_into_the_manifest(multitask, tmp_path):
    from app.loading import file_digest, load_model

    _, _, checkpoint = multitask
    with pytest.raises(UserError, match=r"multitask:.*is not defined in.*--trust-checkpoint"):
        load_model(checkpoint)  # its config names code outside the project: a checkpoint is data
    teacher = load_model(checkpoint, trust_checkpoint=True)
    saved = torch.load(checkpoint, weights_only=True)["model"]
    assert not teacher.training and all(torch.equal(value, saved[name]) for name, value in teacher.state_dict().items())
    config = multitask_config(tmp_path)
    config["trainer"].update(type="multitask:DistilTrainer", args={"teacher": str(checkpoint)}, epochs=1)
    student, run_dir = build_trainer(tmp_path, config, TRUST, run_id="student")
    student.train()
    loaded = json.loads((run_dir / "manifest.json").read_text())["data"]["loaded_models"]
    assert loaded == [{"path": str(checkpoint), "sha256": file_digest(checkpoint), "weights": "raw", "epoch": 2}]
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["kl"] >= 0
