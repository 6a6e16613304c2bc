"""Your code has a place (issue "your code has a place"): a Trainer subclass named by the config,
a loss that takes the inputs, fine-tuning any model, transforms and ``${references}`` in the
config, outputs that are not one tensor, and a trust rule under which what trains, resumes.

Runs are in-process (``train.main``) on tiny data; each test states an equivalence or a refusal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import metric_rows, save_crafted, tiny_config, write_config
from helpers import run_quiet as run

from app.config import Config
from app.config.refs import resolve_references
from logger.logger import close_log_files
from utils.errors import UserError


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["model"]


# -- a Trainer subclass from a user module ------------------------------------------------------------


def shrinking_config(tmp_path: Path, epochs: int) -> Path:
    config = tiny_config(tmp_path, epochs=epochs, limit_batches=5, accumulate_steps=2, ema_decay=0.9, save_every_n_steps=1)
    config["trainer"].update(type="user_steps:ShrinkingTrainer", args={"penalty": 0.001})
    config["loss"] = "user_steps:nll_plus_input_energy"
    return write_config(tmp_path, config, f"shrinking-{epochs}.json")


def test_a_user_trainer_subclass_changes_the_step_and_four_epochs_equal_two_plus_a_resume_of_two(tmp_path):
    saved = tmp_path / "saved" / "tiny"
    assert run("train", "-c", shrinking_config(tmp_path, 4), "--run-id", "four", "--trust-checkpoint") == 0
    assert run("train", "-c", shrinking_config(tmp_path, 2), "--run-id", "two", "--trust-checkpoint") == 0
    assert run("train", "-r", saved / "two" / "checkpoints" / "last.pth", "trainer.epochs=4", "--trust-checkpoint") == 0
    four, resumed = final_weights(saved / "four"), final_weights(saved / "two")
    assert all(torch.equal(four[key], resumed[key]) for key in four)
    assert metric_rows(saved / "four", timing=False) == metric_rows(saved / "two", timing=False)
    ema = [torch.load(saved / run_id / "checkpoints" / "last.pth", weights_only=True)["ema"]["weights"] for run_id in ("four", "two")]
    assert all(torch.equal(ema[0][key], ema[1][key]) for key in ema[0])

    plain = tiny_config(tmp_path, epochs=4, limit_batches=5, accumulate_steps=2, ema_decay=0.9)
    plain["loss"] = "user_steps:nll_plus_input_energy"
    assert run("train", "-c", write_config(tmp_path, plain, "plain.json"), "--run-id", "plain", "--trust-checkpoint") == 0
    assert not torch.equal(final_weights(saved / "plain")["fc2.weight"], four["fc2.weight"])  # the override did change the step


def test_the_step_sees_the_epoch_and_the_global_step_and_a_resume_without_trust_is_refused(tmp_path):
    from helpers import build_trainer

    config = json.loads(shrinking_config(tmp_path, 2).read_text())
    trainer, run_dir = build_trainer(tmp_path, config)
    trainer.train()
    close_log_files()
    # the pre-flight's batch first, then 5 batches per epoch with accumulation 2: steps after batches 2, 4 and 5
    assert trainer.seen == [(1, 0), (1, 0), (1, 0), (1, 1), (1, 1), (1, 2), (2, 3), (2, 3), (2, 4), (2, 4), (2, 5)]
    code = run("train", "-r", run_dir / "checkpoints" / "last.pth", "trainer.epochs=3")
    assert code == 2  # the checkpoint names a test module: data, not code, unless trusted


def test_a_step_that_returns_the_loss_alone_is_one_line_before_anything_is_written(tmp_path, capsys):
    config = tiny_config(tmp_path, epochs=1)
    config["trainer"]["type"] = "user_steps:BareTrainer"
    assert run("train", "-c", write_config(tmp_path, config), "--trust-checkpoint") == 2
    assert "BareTrainer.training_step returned tensor" in capsys.readouterr().err
    assert not (tmp_path / "saved").exists()
    config["trainer"].update(type="DigitsCNN")
    assert run("train", "-c", write_config(tmp_path, config)) == 2
    assert "trainer.type: unknown name 'DigitsCNN' (looked in trainer)" in capsys.readouterr().err
    config["trainer"].update(type="Trainer", args={"penalty": 1})
    assert run("train", "-c", write_config(tmp_path, config)) == 2
    assert "trainer.args.penalty" in capsys.readouterr().err


def test_a_checkpoint_naming_a_data_or_test_folder_imports_nothing(tmp_path, capsys):
    """Only the project's source packages count: not tests/, not a module under data/ or saved/."""
    config = tiny_config(tmp_path, epochs=1, limit_batches=1)
    config["loss"] = "user_steps:nll_plus_input_energy"
    assert run("train", "-c", write_config(tmp_path, config), "--run-id", "t", "--trust-checkpoint") == 0
    last = tmp_path / "saved" / "tiny" / "t" / "checkpoints" / "last.pth"
    private = ("torch.nn.attention._fa3:register_flash_attention_fa3", "torch.nn:_reduction")  # a library's machinery: one imports a module it is given
    for name in ("tests.user_steps:nll_plus_input_energy", "data.downloaded.loader:Loader", "saved.x:y", "benchmarks.overhead:SyntheticDataLoader", *private):
        state = torch.load(last, weights_only=True)
        state["config"]["loss"] = {"type": name}
        save_crafted(state, last.with_name("named.pth"))
        modules = set(sys.modules)
        assert run("test", "-r", last.with_name("named.pth"), "--out", tmp_path / "m.json") == 2
        assert "is not defined in this project's source packages" in capsys.readouterr().err
        assert not {m for m in set(sys.modules) - modules if m.startswith(("tests", "data.", "saved", "benchmarks", "torch.nn.attention._fa"))}
    # and a -c config naming such code is refused when it starts, not when its checkpoint is resumed
    assert run("train", "-c", write_config(tmp_path, config, "again.json"), "--run-id", "u") == 2
    assert "so this run's checkpoints could not be resumed" in capsys.readouterr().err
    assert not (tmp_path / "saved" / "tiny" / "u").exists()


# -- ${references} ---------------------------------------------------------------------------------------


def test_references_keep_types_follow_overrides_and_name_both_keys_when_wrong(tmp_path):
    data = {"a": {"n": 3, "xs": [1, 2]}, "b": "${a.n}", "c": "run-${a.n}-${d}", "d": True, "e": "${a.xs}", "f": "${a.xs.1}", "g": "\\${literal}"}
    assert resolve_references(data, "x") == {**data, "b": 3, "c": "run-3-true", "e": [1, 2], "f": 2, "g": "${literal}"}
    for bad, message in (
        ({"a": "${b}", "b": "${a}"}, r"a: \$\{b\} refers back to itself \(b -> a -> b\)"),
        ({"a": "${a}"}, r"a -> a"),
        ({"a": "${nope.deep}"}, r"a: \$\{nope.deep\} refers to 'nope.deep', which the config does not have"),
        ({"a": "x${b}", "b": {"k": 1}}, r"a: \$\{b\} is a mapping and cannot be part of a string"),
        ({"x": "${x.a}"}, r"x: \$\{x.a\} refers back to itself \(x.a -> x.a\)"),
    ):
        with pytest.raises(UserError, match=message):
            resolve_references(bad, "x")
    assert resolve_references({"y": {"z": 5}, "x": "${y}", "w": "${x.z}"}, "x")["w"] == 5  # a path through a reference
    config = tiny_config(tmp_path, full_metrics=True)
    config = Config.from_dict(config, "c", ["arch.args.num_classes=7"])
    assert [m["args"]["num_classes"] for m in config["metrics"] if "num_classes" in m.get("args", {})] == [7, 7, 7]
    literal = Config.from_dict({**tiny_config(tmp_path), "name": "a\\${b}"}, "c")
    assert literal["name"] == "a${b}" and Config.from_dict(literal.to_dict(), "again")["name"] == "a${b}"


def test_tuple_and_namedtuple_outputs_are_fields_by_position_and_by_name():
    from collections import namedtuple

    from trainer.predictor import Predictor

    Pair = namedtuple("Pair", ["scores", "embedding"])

    class TwoHeads(torch.nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind

        def forward(self, x):
            scores, embedding = x.sum(dim=1, keepdim=True), x[:, :2]
            if self.kind == "tuple":
                return scores, embedding, torch.tensor(1.0)  # a scalar: not one row per sample, left out
            return Pair(scores, {"first": embedding[:, 0], "pair": embedding})

    batches = [(torch.arange(4), (torch.randn(4, 3), torch.zeros(4))), (torch.arange(4, 6), (torch.randn(2, 3), torch.zeros(2)))]
    tuple_fields = [b.fields for b in Predictor(TwoHeads("tuple"), torch.device("cpu")).predict(batches)]
    assert list(tuple_fields[0]) == ["0", "1"] and tuple_fields[1]["1"].shape == (2, 2)
    named = [b.fields for b in Predictor(TwoHeads("named"), torch.device("cpu"), fields=["embedding.first", "scores"]).predict(batches)]
    assert list(named[0]) == ["embedding.first", "scores"] and named[0]["embedding.first"].shape == (4,)
