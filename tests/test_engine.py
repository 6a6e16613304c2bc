"""The training engine: accumulation, clipping, AMP, schedulers, early stop, NaN, debug aids.

These build the Trainer in-process through train.py's own ``build_trainer`` and train tiny
real runs on the digits data, then compare against what plain torch computes.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ROOT, build_trainer, metric_rows, run_here, tiny_config, write_config

MLP = {"type": "fixtures.model:MLP", "args": {"in_features": 64, "hidden": 32, "num_classes": 10, "dropout": 0.0}}


def mlp_config(tmp_path, **trainer) -> dict:
    config = tiny_config(tmp_path, **trainer)
    config["arch"] = MLP
    config["optimizer"] = {"type": "SGD", "args": {"lr": 0.1}}
    config["lr_scheduler"] = None
    # 1,438 training samples minus 158 for validation leaves 1,280 = 20 batches of 64: no partial batch.
    config["data_loader"]["args"].update(validation_split=158, batch_size=64)
    return config


def params(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_accumulating_k_micro_batches_equals_one_k_times_larger_batch(tmp_path):
    big, _ = build_trainer(tmp_path, mlp_config(tmp_path, epochs=1), run_id="big")
    small, _ = build_trainer(tmp_path, mlp_config(tmp_path, epochs=1, accumulate_steps=4), "data_loader.args.batch_size=16", run_id="small")
    torch.testing.assert_close(params(big.model.module), params(small.model.module))  # same seed, same start
    big.train()
    small.train()
    assert big.progress.global_step == small.progress.global_step == 20
    torch.testing.assert_close(params(big.model.module), params(small.model.module), rtol=1e-5, atol=1e-6)
    before = params(build_trainer(tmp_path, mlp_config(tmp_path, epochs=1), run_id="fresh")[0].model.module)
    assert not torch.allclose(before["net.1.weight"], params(big.model.module)["net.1.weight"])


def test_clipping_bounds_the_gradient_norm(tmp_path):
    """With plain SGD at lr 1 one step moves the weights by exactly the (clipped) gradient."""

    def step_size(*overrides):
        trainer, _ = build_trainer(
            tmp_path, mlp_config(tmp_path, epochs=1, limit_batches=1), "optimizer.args.lr=1.0", *overrides, run_id=f"c{len(overrides)}"
        )
        before = torch.cat([p.detach().flatten().clone() for p in trainer.model.module.parameters()])
        trainer.train()
        after = torch.cat([p.detach().flatten() for p in trainer.model.module.parameters()])
        return (after - before).norm().item()

    assert step_size() > 0.05  # unclipped, the gradient is larger than the bound
    assert step_size("trainer.clip_grad_norm=0.05") == pytest.approx(0.05, rel=1e-4)


class DtypeRecorder:
    """Forward hook that records the dtype the first Linear layer computed in."""

    def __init__(self, module: torch.nn.Module):
        self.dtypes: set[torch.dtype] = set()
        module.register_forward_hook(lambda mod, inp, out: self.dtypes.add(out.dtype))


def test_bf16_autocast_trains_on_cpu(tmp_path):
    trainer, run_dir = build_trainer(tmp_path, mlp_config(tmp_path, epochs=2, amp="bf16"))
    recorder = DtypeRecorder(trainer.model.module.net[1])
    trainer.train()
    assert recorder.dtypes == {torch.bfloat16}
    losses = [row["loss"] for row in metric_rows(run_dir)]
    assert all(math.isfinite(x) for x in losses) and losses[1] < losses[0]


def test_fp16_uses_a_grad_scaler_whose_state_is_checkpointed(tmp_path):
    trainer, run_dir = build_trainer(tmp_path, mlp_config(tmp_path, epochs=1, amp="fp16"))
    trainer.train()
    assert trainer.precision.scaler is not None
    state = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert state["precision"]["scale"] > 0 and "growth_factor" in state["precision"]
    assert math.isfinite(metric_rows(run_dir)[0]["loss"])


def test_per_step_scheduler_matches_torch_schedule(tmp_path):
    config = mlp_config(tmp_path, epochs=2)
    config["lr_scheduler"] = {"type": "OneCycleLR", "args": {"max_lr": 0.5, "total_steps": 40}, "interval": "step"}
    trainer, run_dir = build_trainer(tmp_path, config)
    trainer.train()
    reference_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    reference = torch.optim.lr_scheduler.OneCycleLR(reference_opt, max_lr=0.5, total_steps=40)
    expected = []  # an epoch row logs the LR its last step left for the next step
    for _ in range(2):
        for _ in range(20):
            reference_opt.step()
            reference.step()
        expected.append(reference_opt.param_groups[0]["lr"])
    assert [row["lr"] for row in metric_rows(run_dir)] == pytest.approx(expected)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(reference_opt.param_groups[0]["lr"])


def test_plateau_scheduler_is_fed_the_monitored_metric(tmp_path):
    config = mlp_config(tmp_path, epochs=4, monitor="min val_loss")
    # mode "max" on a falling val_loss: every epoch after the first is a plateau, so the LR halves.
    config["lr_scheduler"] = {"type": "ReduceLROnPlateau", "args": {"mode": "max", "patience": 0, "factor": 0.5}}
    trainer, run_dir = build_trainer(tmp_path, config)
    trainer.train()
    assert [row["lr"] for row in metric_rows(run_dir)] == pytest.approx([0.1, 0.1, 0.05, 0.025])


def test_early_stop_after_exactly_n_epochs_without_improvement(tmp_path):
    config = mlp_config(tmp_path, epochs=10, monitor="min val_loss", early_stop=3)
    trainer, run_dir = build_trainer(tmp_path, config, "optimizer.args.lr=0.0")  # nothing changes after epoch 1
    trainer.train()
    assert [row["epoch"] for row in metric_rows(run_dir)] == [1, 2, 3, 4]
    assert trainer.monitor.best_epoch == 1 and trainer.monitor.bad_epochs == 3


def test_best_checkpoint_follows_every_improvement_regardless_of_save_period(tmp_path):
    trainer, run_dir = build_trainer(tmp_path, mlp_config(tmp_path, epochs=3, save_period=0, monitor="max val_accuracy"))
    trainer.train()
    best = torch.load(run_dir / "checkpoints" / "best.pth", weights_only=True)
    assert best["progress"]["epoch"] == trainer.monitor.best_epoch
    assert not list((run_dir / "checkpoints").glob("epoch-*.pth"))


@pytest.mark.slow
def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(tmp_path):
    config = mlp_config(tmp_path, epochs=3)
    config["loss"] = {"type": "fault_injection:NanLossAfter", "args": {"at": 28}}  # the pre-flight's loss is call 1
    path = write_config(tmp_path, config)
    result = run_here("train.py", "-c", str(path), "--run-id", "nan", "--trust-checkpoint", env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: non-finite loss (nan) in epoch 2 at optimizer step 27")
    assert "Traceback" not in result.stderr
    state = torch.load(tmp_path / "saved" / "tiny" / "nan" / "checkpoints" / "last.pth", weights_only=True)
    assert (state["progress"]["epoch"], state["progress"]["batch_in_epoch"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_limit_and_overfit_batches(tmp_path):
    limited, _ = build_trainer(tmp_path, mlp_config(tmp_path, epochs=2, limit_batches=3), run_id="limited")
    limited.train()
    assert limited.progress.global_step == 6
    config = mlp_config(tmp_path, epochs=30, overfit_batches=1, monitor="max val_accuracy")
    overfit, run_dir = build_trainer(tmp_path, config, "optimizer.args.lr=0.5", run_id="overfit")
    overfit.train()
    assert overfit.progress.global_step == 30
    assert metric_rows(run_dir)[-1]["val_accuracy"] == 1.0  # validation runs on the same single batch


def test_len_epoch_trains_exactly_that_many_batches_across_passes(tmp_path):
    trainer, run_dir = build_trainer(tmp_path, mlp_config(tmp_path, epochs=3, len_epoch=30))
    trainer.train()
    assert trainer.progress.global_step == 90  # 4.5 passes over 20-batch data
    assert len(metric_rows(run_dir)) == 3


def test_channels_last_trains_the_cnn(tmp_path):
    trainer, run_dir = build_trainer(tmp_path, tiny_config(tmp_path, epochs=1, channels_last=True))
    trainer.train()
    assert trainer.model.module.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(metric_rows(run_dir)[0]["val_loss"])


def test_activation_checkpointing_recomputes_without_changing_the_result(tmp_path):
    plain, _ = build_trainer(tmp_path, tiny_config(tmp_path, epochs=1, limit_batches=4), run_id="plain")
    plain.train()  # each run starts from the config's seed when it is built: build the next one after
    config = tiny_config(tmp_path, epochs=1, limit_batches=4, activation_checkpointing=["conv2", "fc1"])
    checkpointed, run_dir = build_trainer(tmp_path, config, run_id="checkpointed")
    inner = checkpointed.model.module.fc1._checkpoint_wrapped_module
    forward, calls = inner.forward, []
    inner.forward = lambda x: calls.append(torch.is_grad_enabled()) or forward(x)  # forward hooks do not see the recomputation
    checkpointed.train()
    assert calls == [True] * (2 * 4) + [False] * 4  # forward and recomputation in each of 4 steps, then 4 validation batches
    a, b = params(plain.model.module), torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()  # the wrapper's name never reaches a checkpoint
    assert all(torch.equal(a[key], b[key]) for key in a)  # dropout on: the recomputation draws the same masks
