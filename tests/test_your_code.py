"""Your code has a place (issue "your code has a place"): a Trainer subclass named by the config,
a loss that takes the inputs, fine-tuning any model, transforms and ``${references}`` in the
config, outputs that are not one tensor, and a trust rule under which what trains, resumes.

Runs are in-process (``train.main``) on tiny data; each test states an equivalence or a refusal.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, metric_rows, save_crafted, tiny_config, write_config, write_images
from PIL import Image

import predict
import train
from app.config import Config
from app.config.refs import resolve_references
from app.prediction_files import read_predictions
from data_loader.image_folder import ImageFolderDataLoader
from logger.logger import close_log_files
from utils.errors import UserError

TEST_PY = None


def run(script: str, *args) -> int:
    """An entry script's ``main`` in-process, its output swallowed; the exit code."""
    global TEST_PY
    if script == "test" and TEST_PY is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("test_entry_your_code", ROOT / "test.py")
        TEST_PY = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = TEST_PY
        spec.loader.exec_module(TEST_PY)
    main = {"train": train.main, "test": TEST_PY.main if TEST_PY else None, "predict": predict.main}[script]
    with contextlib.redirect_stdout(None):
        try:
            return main([str(a) for a in args])
        finally:
            close_log_files()


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
    assert {key: arrays[key].shape for key in arrays} == {"index": (359,), "target": (359,), "recon": (359, 1, 8, 8), "mu": (359, 8), "logvar": (359, 8)}
    assert (arrays["index"] == np.arange(359)).all()

    config = Config.from_dict(torch.load(checkpoint, weights_only=True)["config"], "checkpoint", trusted=False)
    model = config.init_obj("arch")
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    images, _ = config.init_obj("data_loader", training=False).dataset.tensors
    with torch.no_grad():
        expected = model.eval()(images[:50])
    assert np.allclose(arrays["mu"][:50], expected["mu"].numpy(), atol=1e-6) and np.allclose(arrays["recon"][:50], expected["recon"].numpy(), atol=1e-6)

    assert run("predict", "-r", checkpoint, "--out", tmp_path / "mu.csv", "--fields", "logvar,mu") == 0
    header = (tmp_path / "mu.csv").read_text().splitlines()[0].split(",")
    assert header == ["index", "target", *(f"logvar_{i}" for i in range(8)), *(f"mu_{i}" for i in range(8))]
    assert run("predict", "-r", checkpoint, "--out", tmp_path / "x.jsonl", "--fields", "sigma") == 2
    assert not list(tmp_path.glob(".x.jsonl*")) and not (tmp_path / "x.jsonl").exists()

    assert run("train", "-r", vae_run / "checkpoints" / "last.pth", "trainer.epochs=3") == 0  # a subclass in model/: no flag needed
    assert [row["epoch"] for row in metric_rows(vae_run)] == [1, 2, 3]


# -- resnet18 named by function, and a checkpoint that names other code --------------------------------


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("three")
    for split, count in (("train", 6), ("val", 3), ("test", 3)):
        for number, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
            write_images(root / split / f"class{number}", count, colour, seed=number + 10 * len(split))
    return root


def resnet_config(tmp_path: Path, images: Path) -> dict:
    config = tiny_config(tmp_path, epochs=1, limit_batches=2)
    config["arch"] = {"type": "torchvision.models:resnet18", "args": {"num_classes": 3}}
    config["data_loader"] = {"type": "ImageFolderDataLoader", "args": {"data_dir": str(images), "image_size": 32, "batch_size": 6, "num_workers": 0}}
    config["loss"] = {"type": "torch.nn.functional:cross_entropy", "args": {"label_smoothing": 0.1}}
    config["metrics"] = [{"type": "Accuracy", "name": "accuracy"}]
    config["optimizer"] = {"type": "SGD", "args": {"lr": 0.01}}
    config["lr_scheduler"] = None
    config["trainer"]["monitor"] = "max val_accuracy"
    return config


def test_a_model_named_by_function_trains_then_tests_predicts_and_resumes_with_no_flag(tmp_path, three_classes, capsys):
    config = write_config(tmp_path, resnet_config(tmp_path, three_classes))
    assert run("train", "-c", config, "--run-id", "r18") == 0, capsys.readouterr().err
    checkpoints = tmp_path / "saved" / "tiny" / "r18" / "checkpoints"
    assert run("test", "-r", checkpoints / "best.pth", "--out", tmp_path / "m.json") == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "m.json").read_text())["samples"] == 9
    assert run("predict", "-r", checkpoints / "best.pth", "--out", tmp_path / "p.jsonl") == 0
    assert [row["label"] for row in read_predictions(tmp_path / "p.jsonl")][:1] in (["class0"], ["class1"], ["class2"])
    capsys.readouterr()
    assert run("train", "-r", checkpoints / "last.pth", "trainer.epochs=2") == 0, capsys.readouterr().err
    printed = (checkpoints.parent / "train.log").read_text()
    assert "resume with  python train.py -r" in printed and "--trust-checkpoint" not in printed

    state = torch.load(checkpoints / "last.pth", weights_only=True)
    marker = tmp_path / "ran"
    state["config"]["loss"] = {"type": "os:system", "args": {"command": f"touch {marker}"}}
    save_crafted(state, checkpoints / "evil.pth")
    for script, extra in (("train", []), ("test", ["--out", tmp_path / "e.json"]), ("predict", ["--out", tmp_path / "e.jsonl"])):
        assert run(script, "-r", checkpoints / "evil.pth", *extra) == 2
        err = capsys.readouterr().err
        assert "loss.type: 'os:system' is not defined in this project's source packages" in err and "--trust-checkpoint" in err
        assert " -c" not in err.split("not defined in")[1]  # no hint that would turn a resume into a fine-tune
    assert not marker.exists()


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


# -- fine-tuning any model: freeze and load_exclude ------------------------------------------------------


def test_a_frozen_batchnorm_stays_frozen_when_ddp_makes_it_a_syncbatchnorm():
    from base.freezing import freeze, frozen_names, is_frozen, refreeze

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Sequential(torch.nn.BatchNorm2d(4)))
    freeze(model, ["1", "2"])
    frozen = frozen_names(model)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # what trainer/parallel.py does with trainer.sync_batchnorm
    assert not is_frozen(converted[1])  # a new object: its eval-mode guard is gone
    refreeze(converted, frozen)
    converted.train()
    assert isinstance(converted[1], torch.nn.SyncBatchNorm) and not converted[1].training and not converted[2][0].training
    assert converted[0].training


def test_a_fine_tune_starts_its_head_fresh_and_keeps_the_frozen_part_bitwise(tmp_path, three_classes, capsys):
    config = resnet_config(tmp_path, three_classes)
    assert run("train", "-c", write_config(tmp_path, config), "--run-id", "base") == 0
    source = tmp_path / "saved" / "tiny" / "base" / "checkpoints" / "last.pth"
    trained = torch.load(source, weights_only=True)["model"]
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    config["trainer"].update(freeze=["conv1", "bn1", "layer1", "layer2"], load_exclude=["fc"], epochs=2)
    path = write_config(tmp_path, config, "finetune.json")

    from helpers import build_trainer

    fresh, _ = build_trainer(tmp_path, config, run_id="fresh")  # a new run of the same config: what "initialised" means
    tuned, tuned_dir = build_trainer(tmp_path, config, "-r", str(source), run_id="tuned")
    start = tuned.model.module.state_dict()
    assert torch.equal(start["fc.weight"], fresh.model.module.state_dict()["fc.weight"]) and not torch.equal(start["fc.weight"], trained["fc.weight"])
    assert all(torch.equal(start[key], trained[key]) for key in trained if not key.startswith("fc."))
    tuned.train()
    close_log_files()
    after = final_weights(tuned_dir)
    kept = [key for key in trained if key.startswith(frozen)]
    assert any(key.endswith("running_mean") for key in kept)
    assert all(torch.equal(after[key], trained[key]) for key in kept)  # weights and BatchNorm statistics
    assert not torch.equal(after["layer3.0.bn1.running_mean"], trained["layer3.0.bn1.running_mean"])  # not frozen: updated
    log = (tuned_dir / "train.log").read_text()
    assert "excluded (trainer.load_exclude, kept as initialised): 2 ['fc.weight', 'fc.bias']" in log and "missing (kept as initialised): none" in log
    optimizer = torch.load(tuned_dir / "checkpoints" / "last.pth", weights_only=True)["optimizer"]["state"]
    frozen_count = sum(1 for name, p in fresh.model.module.named_parameters() if name.startswith(frozen))
    assert len(optimizer["param_groups"][0]["params"]) == len(list(fresh.model.module.parameters())) - frozen_count
    capsys.readouterr()
    assert run("train", "-r", source, "-c", path, "trainer.load_exclude=[head]") == 2
    assert "trainer.load_exclude: no module is named 'head'" in capsys.readouterr().err


def test_transfer_json_needs_only_num_classes_for_a_three_class_folder(tmp_path, three_classes, capsys):
    overrides = [
        f"data_loader.args.data_dir={three_classes}",
        "data_loader.args.image_size=32",
        "data_loader.args.batch_size=6",
        "data_loader.args.num_workers=0",
        "arch.args.weights=null",
        f"trainer.save_dir={tmp_path}",
        "trainer.tensorboard=false",
        "trainer.epochs=1",
        "trainer.limit_batches=1",
    ]
    assert run("train", "-c", ROOT / "configs" / "transfer.json", *overrides) == 2  # 3 classes, 2 in the config
    assert "num_classes" in capsys.readouterr().err
    assert run("train", "-c", ROOT / "configs" / "transfer.json", *overrides, "arch.args.num_classes=3", "--run-id", "x") == 0
    saved = json.loads((tmp_path / "transfer_resnet18" / "x" / "config.json").read_text())
    assert [m["args"]["num_classes"] for m in saved["metrics"] if "args" in m] == [3, 3, 3]
    assert saved["lr_scheduler"]["args"]["T_max"] == 1  # ${trainer.epochs}, after the override


# -- transforms from the config ---------------------------------------------------------------------------


def test_the_default_evaluation_transform_never_crops_and_lists_replace_the_defaults(tmp_path, three_classes):
    loader = ImageFolderDataLoader(str(three_classes), image_size=32, num_workers=0, training=False)
    image = Image.open(sorted((three_classes / "test" / "class0").iterdir())[0]).convert("RGB")
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    assert torch.allclose(loader.dataset[0][0], (pixels - mean) / std, atol=1e-6)  # 32x32 in, the same 32x32 out

    spec = {"train": [{"type": "user_steps:Brighten", "args": {"amount": 20}}], "eval": [{"type": "CenterCrop", "args": {"size": 16}}]}
    training = ImageFolderDataLoader(str(three_classes), image_size=32, num_workers=0, transforms=spec, shuffle=False)
    assert training.valid_subset is None and training.split_validation().dataset[0][0].shape == (3, 16, 16)
    brightened = training.dataset[0][0] * std + mean
    original = torch.from_numpy(np.array(Image.open(training.dataset.samples[0][0]).convert("RGB"))).permute(2, 0, 1).float() / 255
    assert torch.allclose(brightened, (original + 20 / 255).clamp(max=1), atol=1e-5)
    with pytest.raises(UserError, match=r"transforms.eval.0.type: torchvision.transforms.v2 has no transform 'CentreCrop'.*'CenterCrop'"):
        ImageFolderDataLoader(str(three_classes), transforms={"eval": [{"type": "CentreCrop", "args": {"size": 8}}]})
    with pytest.raises(UserError, match="transforms.test: unknown phase"):
        ImageFolderDataLoader(str(three_classes), transforms={"test": []})


def test_a_checkpoint_config_cannot_make_a_loader_import_a_transform_outside_the_project(tmp_path, three_classes):
    config = resnet_config(tmp_path, three_classes)
    config["data_loader"]["args"]["transforms"] = {"train": [{"type": "os:system", "args": {"command": "true"}}]}
    with pytest.raises(UserError, match=r"data_loader.args.transforms.train.0.type: 'os:system' is not defined"):
        Config.from_dict(config, "checkpoint", trusted=False)
    Config.from_dict(config, "config")  # a config you pass is code you chose


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
