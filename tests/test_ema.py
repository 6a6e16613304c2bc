"""EMA weights: the update, exact resume, and the weights evaluation uses."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import build_trainer, last_checkpoint, metric_rows, run_here, tiny_config, write_config

from trainer.ema import EMA


def test_the_average_follows_torch_lerp_with_and_without_warm_up():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, warmup=False)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(step=0)
    for average, before, p in zip(ema.averages, start, model.parameters()):
        torch.testing.assert_close(average, before + 0.1 * (p - before))
    warm = EMA(model, decay=0.999, warmup=True)
    assert warm.decay_at(0) == pytest.approx(0.1) and warm.decay_at(10_000) == 0.999
    assert all(not average.requires_grad and average.grad_fn is None for average in ema.averages)  # no graph recorded


def test_the_average_follows_an_optimizer_and_refuses_a_replaced_weight():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    ema = EMA(model, decay=0.5)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(step)
        expected = [e.lerp(p.detach(), 0.5) for e, p in zip(expected, model.parameters())]
    assert all(torch.equal(a, e) for a, e in zip(ema.averages, expected))
    ema.state_dict()
    model.weight.data = model.weight.data.clone()  # the EMA would silently follow the old tensor
    with pytest.raises(Exception, match=r"ema: a model weight was replaced after the Trainer was built"):
        ema.state_dict()
    with pytest.raises(Exception, match=r"ema: a model weight was replaced"):
        with ema.applied(model):
            pass


def test_applied_swaps_the_average_in_and_the_weights_back_exactly():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.mul_(3)
    trained = model.weight.detach().clone()
    with ema.applied(model):
        assert torch.equal(model.weight, ema.averages[0])
    assert torch.equal(model.weight, trained)


def test_frozen_parameters_are_not_averaged(tmp_path):
    config = tiny_config(tmp_path, epochs=1, limit_batches=2, ema_decay=0.9)
    trainer, _ = build_trainer(tmp_path, config)
    assert trainer.ema.names == [n for n, p in trainer.model.module.named_parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def ema_runs(tmp_path_factory):
    """Four epochs straight, and two epochs plus a resume of two, with EMA on."""
    tmp_path = tmp_path_factory.mktemp("ema")
    config = tiny_config(tmp_path, epochs=4, limit_batches=5, ema_decay=0.8, ema_warmup=True)
    config["arch"]["args"]["dropout"] = 0.3
    path = write_config(tmp_path, config)
    straight = run_here("train.py", "-c", str(path), "--run-id", "straight")
    assert straight.returncode == 0, straight.stderr
    first = run_here("train.py", "-c", str(path), "--run-id", "split", "trainer.epochs=2")
    assert first.returncode == 0, first.stderr
    split = tmp_path / "saved" / "tiny" / "split"
    second = run_here("train.py", "-r", str(split / "checkpoints" / "last.pth"), "trainer.epochs=4")
    assert second.returncode == 0, second.stderr
    return tmp_path / "saved" / "tiny" / "straight", split


@pytest.mark.slow
def test_four_epochs_equal_two_plus_a_resume_of_two_ema_weights_bitwise(ema_runs):
    straight, split = ema_runs
    a, b = last_checkpoint(straight), last_checkpoint(split)
    for part in ("model", "ema"):
        weights_a = a[part] if part == "model" else a[part]["weights"]
        weights_b = b[part] if part == "model" else b[part]["weights"]
        assert weights_a.keys() == weights_b.keys()
        for key in weights_a:
            assert torch.equal(weights_a[key], weights_b[key]), (part, key)
    assert metric_rows(straight, timing=False) == metric_rows(split, timing=False)


@pytest.mark.slow
def test_test_py_evaluates_the_ema_weights_unless_asked_for_the_raw_ones(ema_runs, tmp_path):
    straight, _ = ema_runs
    checkpoint = straight / "checkpoints" / "last.pth"
    state = last_checkpoint(straight)
    from fixtures.data import TinyDataLoader
    from fixtures.model import TinyCNN

    loader = TinyDataLoader(training=False, batch_size=359)
    images, labels = next(iter(loader))
    accuracies = {}
    for weights in ("ema", "raw"):
        model = TinyCNN(dropout=0.3)
        model.load_state_dict({**state["model"], **(state["ema"]["weights"] if weights == "ema" else {})})
        with torch.no_grad():
            accuracies[weights] = (model.eval()(images).argmax(1) == labels).sum().item() / len(labels)
        result = run_here("test.py", "-r", str(checkpoint), "--weights", weights, "--out", str(tmp_path / f"{weights}.json"))
        assert result.returncode == 0, result.stderr
        reported = json.loads((tmp_path / f"{weights}.json").read_text())
        assert reported["weights"] == weights and reported["accuracy"] == accuracies[weights]
    auto = run_here("test.py", "-r", str(checkpoint), "--out", str(tmp_path / "auto.json"))
    assert auto.returncode == 0 and json.loads((tmp_path / "auto.json").read_text())["accuracy"] == accuracies["ema"]
    assert accuracies["ema"] != accuracies["raw"]  # a decay of 0.8 over 20 steps leaves the average elsewhere
