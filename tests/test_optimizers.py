"""Several optimizers declared in the config (issue 38 items 2, 3, 5; ``trainer/optimizers.py``).

The model is ``tests/two_optimizers.py``'s two-part one: the body's Adam steps every 2nd engine
step, the head's SGD every step, each on its own loss (both from one forward). Runs are in-process
(``train.py``'s ``main``); the one straight run is shared by the tests that compare against it.
"""

from __future__ import annotations

import copy
import signal

import pytest
import torch
from helpers import build_trainer, last_checkpoint, metric_rows, run_here, write_config
from two_optimizers import config, two_losses

TRUST = "--trust-checkpoint"  # the model and Trainer live in tests/


def train(tmp_path, run_id: str, *overrides: str, **trainer):
    path = write_config(tmp_path, config(tmp_path, accumulate_steps=2, **trainer), f"{run_id}.json")
    result = run_here("train.py", "-c", path, "--run-id", run_id, *overrides, TRUST)
    return result, tmp_path / "saved" / "tiny" / run_id


def assert_same_state(a: dict, b: dict) -> None:
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for part in ("optimizer", "lr_scheduler"):
        assert a[part].keys() == b[part].keys() == {"body", "head"}
    for name in ("body", "head"):
        for index, state in a["optimizer"][name]["state"]["state"].items():
            other = b["optimizer"][name]["state"]["state"][index]
            assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(other[k])) for k, v in state.items()), (name, index)
        assert a["lr_scheduler"][name] == b["lr_scheduler"][name]
    assert a["progress"]["global_step"] == b["progress"]["global_step"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Two epochs, accumulation 2, pre-flight on: the run the others must equal."""
    tmp = tmp_path_factory.mktemp("straight")
    result, run_dir = train(tmp, "straight")
    assert result.returncode == 0, result.stderr
    return run_dir


def test_each_optimizer_steps_its_own_parameters_on_its_own_loss_by_the_every_rule(tmp_path):
    """The engine's weights after an epoch equal a loop written here with ``torch.autograd.grad``:
    the body's loss reaches only the body, the head's only the head, the body steps at engine steps
    1, 3, 5, ... and accumulation averages two micro-batches."""
    data = config(tmp_path, epochs=1, accumulate_steps=2)
    data["arch"]["args"]["dropout"] = 0.0  # the loop here draws no dropout masks
    data["lr_scheduler"] = None
    trainer, _ = build_trainer(tmp_path, data, TRUST)
    model = copy.deepcopy(trainer.model.module)
    batches = [trainer.read_batch(batch) for batch in trainer.data.epoch_batches(1, 0)]
    trainer.train()

    owned = {"body": list(model.body.parameters()), "head": list(model.head.parameters())}
    optimizers = {"body": torch.optim.Adam(owned["body"], lr=0.01), "head": torch.optim.SGD(owned["head"], lr=0.1, momentum=0.9)}
    model.train()
    for step, start in enumerate(range(0, len(batches), 2)):
        stepping = ["body", "head"] if step % 2 == 1 else ["head"]
        group = batches[start : start + 2]
        grads = {name: [torch.zeros_like(p) for p in owned[name]] for name in stepping}
        for inputs, target in group:
            losses = two_losses(model, model(inputs), target)
            for name in stepping:
                for total, grad in zip(grads[name], torch.autograd.grad(losses[name] / len(group), owned[name], retain_graph=True)):
                    total += grad
        for name in stepping:
            for p, grad in zip(owned[name], grads[name]):
                p.grad = grad
            optimizers[name].step()
            optimizers[name].zero_grad()
    for (key, mine), theirs in zip(model.state_dict().items(), trainer.model.module.state_dict().values()):
        assert torch.allclose(mine.float(), theirs.float(), atol=1e-6), key
    assert trainer.global_step == len(batches) // 2


def test_checkpoint_and_metrics_hold_each_optimizer_and_schedule(straight):
    state = last_checkpoint(straight)
    assert {name: part["type"] for name, part in state["optimizer"].items()} == {"body": "Adam", "head": "SGD"}
    assert {name: part["type"] for name, part in state["lr_scheduler"].items()} == {"body": "StepLR", "head": "StepLR"}
    rows = metric_rows(straight)
    steps_per_epoch = 10  # 20 batches, 2 per step
    for epoch, row in enumerate(rows, 1):
        body_steps = epoch * steps_per_epoch // 2  # every 2nd engine step; its StepLR steps per step (step_size 3)
        assert row["lr_body"] == pytest.approx(0.01 * 0.5 ** (body_steps // 3))
        assert row["lr_head"] == pytest.approx(0.1 * 0.5 ** (epoch - 1))  # per epoch, logged before the epoch's step
        assert {"loss_body", "loss_head", "val_loss_body", "val_loss_head"} <= row.keys()
        assert row["val_loss"] == pytest.approx(row["val_loss_body"] + row["val_loss_head"])
        assert "lr" not in row


def test_a_stop_mid_epoch_mid_cycle_resumes_bitwise(tmp_path, straight):
    """Stopped (as by SIGTERM) after engine step 13, inside epoch 2 and between two steps of the body."""
    stopped, run_dir = train(tmp_path, "stopped", "trainer.args.stop_at=12")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    mid = last_checkpoint(run_dir)
    assert (mid["progress"]["epoch"], mid["progress"]["batch_in_epoch"], mid["progress"]["global_step"]) == (2, 6, 13)
    resumed = run_here("train.py", "-r", run_dir / "checkpoints" / "last.pth", TRUST)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_state(last_checkpoint(straight), last_checkpoint(run_dir))
    assert metric_rows(straight, timing=False) == metric_rows(run_dir, timing=False)


def test_preflight_changes_nothing_with_two_optimizers(tmp_path, straight):
    result, run_dir = train(tmp_path, "no-preflight", "trainer.preflight=false")
    assert result.returncode == 0, result.stderr
    assert_same_state(last_checkpoint(straight), last_checkpoint(run_dir))


def test_bf16_autocast_trains_both_parts(tmp_path, straight):
    result, run_dir = train(tmp_path, "bf16", "trainer.amp=bf16")
    assert result.returncode == 0, result.stderr
    row = metric_rows(run_dir)[-1]
    assert torch.isfinite(torch.tensor([row["loss_body"], row["loss_head"], row["val_loss"]])).all()
    assert row["val_accuracy"] > 0.5
    fp32 = last_checkpoint(straight)["model"]
    changed = {key for key, value in last_checkpoint(run_dir)["model"].items() if not torch.equal(value, fp32[key])}
    assert {"body.1.weight", "head.weight"} <= changed  # bf16 arithmetic: another trajectory of both parts


@pytest.mark.slow
def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(tmp_path):
    """Under torchrun (gloo) there is no DDP wrapper: the engine averages each optimizer's gradients
    over the processes itself, so 2 x 32 trains as 1 x 64 does (over the same data order)."""
    from helpers import ROOT, run_script

    def experiment(batch_size: int):
        data = config(tmp_path, epochs=1, accumulate_steps=2)
        data["arch"]["args"].update(dropout=0.0, norm=False)
        data["data_loader"]["args"].update(batch_size=batch_size, validation_split=157, drop_last=True, in_memory=False)
        return write_config(tmp_path, data, f"b{batch_size}.json")

    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py")
    two = run_script(*torchrun, "-c", str(experiment(32)), "--run-id", "two", TRUST, env=env, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = run_here("train.py", "-c", experiment(64), "--run-id", "one", TRUST)
    assert one.returncode == 0, one.stderr
    a, b = (last_checkpoint(tmp_path / "saved" / "tiny" / run) for run in ("two", "one"))
    assert (a["world_size"], b["world_size"]) == (2, 1)
    for key in b["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    assert a["progress"]["global_step"] == b["progress"]["global_step"] == 10  # 1,280 samples / 128 per step
