"""The image-folder and transfer examples (ImageFolderDataLoader, torchvision's resnet18 by function,
configs/transfer.json): training, fine-tuning (freeze, load_exclude) and transforms from the config.
They leave with the examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, check_passes_base_arguments_on, example_or_skip, save_crafted, tiny_config, write_config, write_images
from helpers import run_quiet as run
from PIL import Image

example_or_skip("image folder", "model.metric:Accuracy")  # what it uses of the files a user rewrites first

from app.config import Config  # noqa: E402
from app.prediction_files import read_predictions  # noqa: E402
from data_loader.image_folder import ImageFolderDataLoader  # noqa: E402
from logger.logger import close_log_files  # noqa: E402
from utils.errors import UserError  # noqa: E402


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["model"]


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
    config["data_loader"] = {
        "type": "ImageFolderDataLoader",
        "args": {"data_dir": str(images), "image_size": 32, "batch_size": 6, "num_workers": 0},
    }
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
    assert torch.equal(start["fc.weight"], fresh.model.module.state_dict()["fc.weight"]) and not torch.equal(
        start["fc.weight"], trained["fc.weight"]
    )
    assert all(torch.equal(start[key], trained[key]) for key in trained if not key.startswith("fc."))
    tuned.train()
    close_log_files()
    after = final_weights(tuned_dir)
    kept = [key for key in trained if key.startswith(frozen)]
    assert any(key.endswith("running_mean") for key in kept)
    assert all(torch.equal(after[key], trained[key]) for key in kept)  # weights and BatchNorm statistics
    assert not torch.equal(after["layer3.0.bn1.running_mean"], trained["layer3.0.bn1.running_mean"])  # not frozen: updated
    log = (tuned_dir / "train.log").read_text()
    assert (
        "excluded (trainer.load_exclude, kept as initialised): 2 ['fc.weight', 'fc.bias']" in log
        and "missing (kept as initialised): none" in log
    )
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


def test_a_validation_split_is_refused_in_one_line_it_validates_on_val(tmp_path):
    """It passes ``BaseDataLoader``'s arguments on, but validates on ``val/``: a split is one line,
    from the class and through the config."""
    check_passes_base_arguments_on(ImageFolderDataLoader)
    with pytest.raises(UserError, match=r"^data_loader\.args\.validation_split: ImageFolderDataLoader validates on val/") as caught:
        ImageFolderDataLoader(str(tmp_path), validation_split=0.1)
    assert "\n" not in str(caught.value) and str(caught.value).endswith("remove it from data_loader.args")
    config = tiny_config(tmp_path)
    config["data_loader"] = {"type": "ImageFolderDataLoader", "args": {"data_dir": str(tmp_path), "validation_split": 0.2}}
    with pytest.raises(UserError, match=r"^c\.json: data_loader\.args\.validation_split: ImageFolderDataLoader validates on val/"):
        Config.from_dict(config, "c.json").init_obj("data_loader")
