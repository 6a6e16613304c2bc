"""Epoch metrics that are exact for any metric: functions as sample-weighted means, metric objects
(torchmetrics) over every sample, mid-epoch state in checkpoints, exact monitoring, and test.py's
numbers independent of batch size and of the number of processes."""

from __future__ import annotations

import collections
import io
import json
import math

import pytest
import torch
import torchmetrics
from fixtures.metric import Accuracy, accuracy
from helpers import build_trainer, run_here, run_script, tiny_config

from base.progress import Monitor
from trainer.metric_groups import GROUP_BATCHES
from trainer.metrics import MetricSet

CPU = torch.device("cpu")


def batches(sizes: list[int], classes: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    output = torch.randn(total, classes, generator=generator).log_softmax(1)
    target = torch.randint(0, classes, (total,), generator=generator)
    return output, target, list(zip(output.split(sizes), target.split(sizes)))


def run(metrics: dict, parts) -> dict:
    metric_set = MetricSet(metrics, CPU)
    for output, target in parts:
        metric_set.update(output, target, len(target))
    return metric_set.compute()


def test_a_function_metric_is_the_sample_weighted_mean():
    output, target, parts = batches([7, 64, 3, 1])
    values = run({"accuracy": accuracy}, parts)
    assert values["accuracy"] == pytest.approx((output.argmax(1) == target).double().mean().item(), abs=1e-7)


def test_metric_objects_do_not_depend_on_how_samples_were_batched():
    def objects():
        return {
            "f1": torchmetrics.classification.MulticlassF1Score(num_classes=5, average="macro"),
            "auroc": torchmetrics.classification.MulticlassAUROC(num_classes=5),
            "confusion": torchmetrics.classification.MulticlassConfusionMatrix(num_classes=5),
            "accuracy": Accuracy(),
        }

    output, target, one = batches([75])
    _, _, many = batches([1, 7, 64, 3])
    whole, split = run(objects(), one), run(objects(), many)
    assert whole == split  # exactly: counts and ranks, not means of means
    assert whole["accuracy"] == (output.argmax(1) == target).sum().item() / 75  # float64, as a file of predictions gives
    assert len(whole["confusion"]) == 5 and sum(map(sum, whole["confusion"])) == 75


def test_mid_epoch_state_survives_a_weights_only_round_trip():
    _, _, parts = batches([10, 10, 10, 10])
    metrics = {"accuracy": accuracy, "auroc": torchmetrics.classification.MulticlassAUROC(num_classes=5), "exact": Accuracy()}
    straight = MetricSet(metrics, CPU).fresh()
    for output, target in parts:
        straight.update(output, target, len(target))
    first = MetricSet(metrics, CPU).fresh()
    for output, target in parts[:2]:
        first.update(output, target, len(target))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = MetricSet(metrics, CPU).fresh()
    second.load_state_dict(torch.load(buffer, weights_only=True))  # every object restored: the values below are equal
    for output, target in parts[2:]:
        second.update(output, target, len(target))
    assert second.compute() == straight.compute()


class SizesSeen:
    """A metric object that records the batch sizes its updates received."""

    def __init__(self):
        self.sizes = []

    def update(self, output, target):
        self.sizes.append(len(target))

    def compute(self):
        return torch.tensor(float(sum(self.sizes)))

    def reset(self):
        self.sizes = []

    def state_dict(self):
        return {"sizes": list(self.sizes)}

    def load_state_dict(self, state):
        self.sizes = list(state["sizes"])


def test_batches_are_measured_in_groups_that_a_mid_group_checkpoint_keeps():
    sizes = [int(n) for n in torch.randint(1, 9, (100,), generator=torch.Generator().manual_seed(3))]
    output, target, parts = batches(sizes)
    metrics = {"accuracy": accuracy, "exact": Accuracy(), "f1": torchmetrics.classification.MulticlassF1Score(num_classes=5, average="macro")}
    straight = MetricSet(metrics, CPU).fresh()
    for out, tgt in parts:
        straight.update(out, tgt, len(tgt))
    first = MetricSet(metrics, CPU).fresh()
    for out, tgt in parts[: GROUP_BATCHES + 13]:  # a whole group, then 13 batches queued
        first.update(out, tgt, len(tgt))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = MetricSet(metrics, CPU).fresh()
    second.load_state_dict(torch.load(buffer, weights_only=True))
    for out, tgt in parts[GROUP_BATCHES + 13 :]:
        second.update(out, tgt, len(tgt))
    resumed, values = second.compute(), straight.compute()
    assert resumed == values  # bitwise: the resumed pass grouped its batches as the straight one
    assert values["exact"] == (output.argmax(1) == target).sum().item() / len(target)
    assert values["accuracy"] == pytest.approx(values["exact"], abs=1e-7)

    _, _, parts = batches([8] * (GROUP_BATCHES + 7) + [5])
    seen = MetricSet({"seen": SizesSeen()}, CPU)
    for out, tgt in parts:
        seen.update(out, tgt, len(tgt))
    seen.compute()
    assert seen.objects["seen"].sizes == [GROUP_BATCHES * 8, 7 * 8 + 5]  # a whole group, then the rest at the end


def test_equal_batches_fill_the_groups_slots_through_resumes_epochs_and_a_short_last_batch():
    def mean_output(output, target):  # reads the joined values: a wrong slot or stale row shows
        return output.double().mean()

    sizes = [8] * (GROUP_BATCHES + 6) + [3]
    output, target, parts = batches(sizes)
    metrics = {"accuracy": accuracy, "mean": mean_output}
    last_full = GROUP_BATCHES + 6
    for cut in (1, GROUP_BATCHES // 2, GROUP_BATCHES, GROUP_BATCHES + 3, last_full):  # after a group's first batch, inside, at its end...
        straight, first = MetricSet(metrics, CPU), MetricSet(metrics, CPU)
        for _epoch in range(2):  # the second epoch reuses the buffers
            straight.reset()
            for out, tgt in parts:
                straight.update(out, tgt, len(tgt))
            expected = straight.compute()
        first.reset()
        for out, tgt in parts:
            first.update(out, tgt, len(tgt))
        first.compute()
        first.reset()
        for out, tgt in parts[:cut]:
            first.update(out, tgt, len(tgt))
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
        buffer.seek(0)
        second = MetricSet(metrics, CPU)
        second.load_state_dict(torch.load(buffer, weights_only=True))
        for out, tgt in parts[cut:]:
            second.update(out, tgt, len(tgt))
        assert second.compute() == expected, cut  # bitwise: groups of the same batches in the same order
    assert expected["mean"] == pytest.approx(output.double().mean().item(), abs=1e-12)
    assert expected["accuracy"] == pytest.approx((output.argmax(1) == target).double().mean().item(), abs=1e-7)


def test_batches_that_cannot_be_joined_safely_are_measured_one_by_one():
    _, _, parts = batches([4, 4, 3])
    seen = MetricSet({"seen": SizesSeen()}, CPU)
    for out, tgt in parts:  # a list of per-sample targets is never concatenated
        seen.update(out, tgt.tolist(), len(tgt))
    assert seen.compute() == {"seen": 11.0} and seen.objects["seen"].sizes == [4, 4, 3]

    wide = MetricSet({"seen": SizesSeen()}, CPU)
    for _ in range(3):  # two such batches would pass 4M values: measured as they come, not copied
        wide.update(torch.zeros(2, 1 << 21), torch.zeros(2), 2)
    assert wide.objects["seen"].sizes == [2, 2, 2]

    keyed = MetricSet({"seen": SizesSeen()}, CPU)
    for out, tgt in parts:  # a dict of batched tensors is gathered like a tensor
        keyed.update({"logits": out}, tgt, len(tgt))
    keyed.compute()
    assert keyed.objects["seen"].sizes == [11]

    Pair = collections.namedtuple("Pair", "logits aux")
    pairs = MetricSet({"seen": SizesSeen()}, CPU)
    for out, tgt in parts:
        pairs.update(Pair(out, out), tgt, len(tgt))
    buffer = io.BytesIO()
    torch.save(pairs.state_dict(), buffer)  # a namedtuple is not plain data: the group is measured first
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["group"] is None
    assert pairs.objects["seen"].sizes == [11]
    restored = MetricSet({"seen": SizesSeen()}, CPU)
    restored.load_state_dict(saved)
    assert restored.objects["seen"].sizes == [11]  # the measured group is in the saved state


def test_training_and_validation_have_separate_metric_objects(tmp_path):
    trainer, _ = build_trainer(tmp_path, tiny_config(tmp_path, full_metrics=True, epochs=1, limit_batches=2))
    train_objects, valid_objects = trainer.train_metrics.objects, trainer.evaluator.metrics.objects
    assert set(train_objects) == set(valid_objects) == {"accuracy", "f1", "auroc", "confusion"}
    assert all(train_objects[name] is not valid_objects[name] for name in train_objects)


def test_a_tie_is_not_an_improvement_and_nan_never_is():
    monitor = Monitor("max", "val_accuracy", patience=2)
    assert monitor.update({"epoch": 1, "val_accuracy": 24 / 38})
    assert not monitor.update({"epoch": 2, "val_accuracy": 24 / 38})
    assert not monitor.update({"epoch": 3, "val_accuracy": math.nan})
    assert monitor.should_stop and monitor.best_epoch == 1 and monitor.bad_epochs == 2


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("metrics")
    trainer, run_dir = build_trainer(tmp_path, tiny_config(tmp_path, full_metrics=True, epochs=2))
    trainer.train()
    return tmp_path, run_dir / "checkpoints" / "best.pth"


@pytest.mark.slow
def test_test_py_f1_and_auroc_are_the_same_for_any_batch_size_and_equal_scikit_learn(digits_checkpoint):
    from fixtures.data import TinyDataLoader as DigitsDataLoader
    from fixtures.model import TinyCNN as DigitsCNN
    from sklearn.metrics import f1_score, roc_auc_score

    from utils.checkpoints import load_checkpoint

    tmp_path, checkpoint = digits_checkpoint
    reported = {}
    for batch in (1, 7, 64):
        out = tmp_path / f"b{batch}.json"
        result = run_here("test.py", "-r", str(checkpoint), "--out", str(out), f"data_loader.args.batch_size={batch}")
        assert result.returncode == 0, result.stderr
        reported[batch] = json.loads(out.read_text())
    assert {b: (r["f1"], r["auroc"], r["accuracy"], r["confusion"]) for b, r in reported.items()}.keys() == {1, 7, 64}
    assert reported[1]["f1"] == reported[7]["f1"] == reported[64]["f1"]
    assert reported[1]["auroc"] == reported[7]["auroc"] == reported[64]["auroc"]
    assert reported[1]["accuracy"] == reported[7]["accuracy"] == reported[64]["accuracy"]
    model = DigitsCNN()
    model.load_state_dict(load_checkpoint(checkpoint).weights())
    images, labels = next(iter(DigitsDataLoader(training=False, batch_size=359)))
    with torch.no_grad():
        scores = model.eval()(images)
    assert reported[64]["f1"] == pytest.approx(f1_score(labels, scores.argmax(1), average="macro"), abs=1e-6)
    assert reported[64]["auroc"] == pytest.approx(roc_auc_score(labels.numpy(), scores.exp().numpy(), multi_class="ovr"), abs=1e-6)


@pytest.mark.slow
def test_test_py_under_torchrun_reports_what_one_process_reports(digits_checkpoint):
    tmp_path, checkpoint = digits_checkpoint
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert run_here("test.py", "-r", str(checkpoint), "--out", str(one)).returncode == 0
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "test.py", "-r", str(checkpoint), "--out", str(two))
    assert result.returncode == 0, result.stderr
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    for key in ("accuracy", "f1", "auroc", "confusion", "samples"):
        assert a[key] == b[key], key
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
