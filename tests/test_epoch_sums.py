"""Metrics computed in bulk (trainer/epoch_sums.py) equal batch-by-batch metrics, and survive a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from model.metric import accuracy, top_k_acc
from trainer import epoch_sums
from trainer.epoch_sums import EpochSums

CPU = torch.device("cpu")
METRICS = {"accuracy": accuracy, "top_k_acc": top_k_acc}


def batches(sizes: list[int], classes: int = 10, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(loss, output, target) per batch, random but fixed."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for size in sizes:
        output = torch.randn(size, classes, generator=generator)
        target = torch.randint(0, classes, (size,), generator=generator)
        out.append((torch.nn.functional.cross_entropy(output, target), output, target))
    return out


def batch_by_batch(data, metrics=METRICS) -> torch.Tensor:
    """The reference: every metric on every batch, weighted by the batch size, in float64."""
    sums = torch.zeros(1 + len(metrics), dtype=torch.float64)
    for loss, output, target in data:
        sums += torch.stack([loss, *(fn(output, target) for fn in metrics.values())]).double() * len(target)
    return sums


def feed(sums: EpochSums, data, first_step: int = 1) -> EpochSums:
    for step, (loss, output, target) in enumerate(data, start=first_step):
        sums.add(loss, output, target, step)
    return sums


def test_metrics_on_kept_batches_equal_batch_by_batch_means():
    data = batches([64, 64, 64, 17])
    sums = feed(EpochSums(METRICS, CPU, torch.float64), data[:3])
    assert len(sums.outputs) == 3 and not sums.metric_sums.any()  # no metric kernel per batch
    feed(sums, data[3:], first_step=4)
    assert len(sums.outputs) == 1 and sums.metric_sums.all()  # a shorter batch: the first three were measured
    mean, bad = sums.read_losses()
    assert bad is None and mean == pytest.approx(sum(float(loss) for loss, _, _ in data) / 4)
    torch.testing.assert_close(sums.totals(), batch_by_batch(data), rtol=1e-6, atol=0)
    assert sums.samples == 64 * 3 + 17 and not sums.outputs


def test_outputs_that_do_not_concatenate_are_measured_batch_by_batch():
    def token_accuracy(output, target):
        return (output["logits"].argmax(-1) == target).float().mean()

    generator = torch.Generator().manual_seed(1)
    data = []
    for length in (5, 5, 9, 5):  # another sequence length, then an output with a 0-dim entry
        logits = torch.randn(8, length, 4, generator=generator)
        output = {"logits": logits, "aux": torch.tensor(0.5)} if len(data) == 3 else {"logits": logits}
        data.append((torch.tensor(1.0), output, torch.randint(0, 4, (8, length), generator=generator)))
    sums = feed(EpochSums({"tokens": token_accuracy}, CPU, torch.float64), data)
    sums.read_losses()
    torch.testing.assert_close(sums.totals(), batch_by_batch(data, {"tokens": token_accuracy}), rtol=1e-6, atol=0)


def test_kept_batches_are_measured_once_they_reach_max_bytes(monkeypatch):
    per_batch = 64 * 10 * 4 + 64 * 8  # float32 output and int64 target
    monkeypatch.setattr(epoch_sums, "MAX_BYTES", 3 * per_batch)
    sums = feed(EpochSums(METRICS, CPU, torch.float64), batches([64] * 5))
    assert len(sums.outputs) == 2 and sums.kept_bytes == 2 * per_batch


def test_a_checkpointed_epoch_continues_to_bitwise_the_same_sums():
    data = batches([32] * 9 + [5], seed=2)
    straight = EpochSums(METRICS, CPU, torch.float64)
    feed(straight, data[:4])
    straight.read_losses()
    straight.measure()  # a log step at batch 4
    feed(straight, data[4:], first_step=5)
    straight.read_losses()

    interrupted = EpochSums(METRICS, CPU, torch.float64)
    feed(interrupted, data[:4])
    interrupted.read_losses()
    interrupted.measure()
    feed(interrupted, data[4:7], first_step=5)
    interrupted.read_losses()
    state = interrupted.state()
    assert len(state["metric_batches"]["outputs"]) == 3  # kept batches travel with the checkpoint
    resumed = feed(EpochSums(METRICS, CPU, torch.float64, state), data[7:], first_step=8)
    resumed.read_losses()
    assert torch.equal(resumed.totals(), straight.totals())
    assert resumed.samples == straight.samples == 9 * 32 + 5


def test_non_finite_losses_name_the_first_bad_step_and_poison_the_total():
    data = batches([4, 4, 4])
    data[1] = (torch.tensor(float("nan")), data[1][1], data[1][2])
    data[2] = (torch.tensor(float("inf")), data[2][1], data[2][2])
    sums = feed(EpochSums({}, CPU, torch.float64), data, first_step=10)
    assert sums.read_losses() == (None, (11, pytest.approx(float("nan"), nan_ok=True)))
    assert math.isnan(float(sums.totals()[0]))
