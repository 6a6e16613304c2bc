"""Transfer learning: pretrained weights from a file, frozen modules that really stay frozen, ImageFolder data."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from helpers import ROOT, example_or_skip, run_here, write_images

example_or_skip("transfer", "model.metric:Accuracy")  # what it uses of the files a user rewrites first

from app.config import Config, build_loss, build_lr_scheduler, build_metrics, build_optimizer  # noqa: E402
from data_loader.image_folder import ImageFolderDataLoader  # noqa: E402
from model.transfer import TransferClassifier  # noqa: E402
from trainer.evaluator import Evaluator  # noqa: E402
from trainer.metrics import MetricSet  # noqa: E402
from utils.checkpoints import load_checkpoint, load_weights  # noqa: E402
from utils.errors import UserError  # noqa: E402

FROZEN = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")  # configs/transfer.json's freeze list, torchvision names
THREADS = {"OMP_NUM_THREADS": "1"}  # the test machine's cores are shared; one thread avoids oversubscription
OFFLINE = {name: "http://127.0.0.1:9" for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")} | {
    "no_proxy": "",
    "NO_PROXY": "",
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """train/ (12 per class), val/ (6 per class) and test/ (4 per class), classes 'blue' and 'red'."""
    root = tmp_path_factory.mktemp("images")
    for split, count in (("train", 12), ("val", 6), ("test", 4)):
        write_images(root / split / "red", count, (200, 40, 40), seed=len(split))
        write_images(root / split / "blue", count, (40, 40, 200), seed=len(split) + 100)
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A torchvision resnet18 state_dict saved to a file, standing in for downloaded ImageNet weights."""
    torch.manual_seed(7)
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    for key, value in state.items():  # non-default running statistics, so an update would show
        if key.endswith(("running_mean", "running_var")):
            value.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def transfer_overrides(images, save_dir, weights) -> list[str]:
    return [
        f"data_loader.args.data_dir={images}",
        "data_loader.args.image_size=32",
        "data_loader.args.batch_size=8",
        "data_loader.args.num_workers=0",
        f"arch.args.weights={weights}",
        f"trainer.save_dir={save_dir}",
        "trainer.tensorboard=false",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, images, pretrained):
    """configs/transfer.json run for real by train.py for 2 epochs; returns its checkpoints folder."""
    save_dir = tmp_path_factory.mktemp("saved")
    overrides = [*transfer_overrides(images, save_dir, pretrained[0]), "trainer.epochs=2", "trainer.save_period=1", "trainer.early_stop=0"]
    result = run_here("train.py", "-c", "configs/transfer.json", "--run-id", "run", *overrides, env=THREADS)
    assert result.returncode == 0, result.stderr + result.stdout
    return save_dir / "transfer_resnet18" / "run" / "checkpoints"


@pytest.mark.slow
def test_fine_tuning_keeps_frozen_weights_and_statistics_bitwise(trained, pretrained):
    _, saved = pretrained
    first = torch.load(trained / "epoch-1.pth", weights_only=True)["model"]
    last = torch.load(trained / "last.pth", weights_only=True)

    model = last["model"]
    assert not any(key.startswith("backbone.fc.") for key in model)  # the ImageNet head is gone
    frozen = [key for key in saved if key.startswith(FROZEN)]
    assert any(key.endswith("running_mean") for key in frozen)
    for key in frozen:
        assert torch.equal(model[f"backbone.{key}"], saved[key]), key
    layer4 = [key for key in saved if key.startswith("layer4.") and key.endswith(("weight", "running_mean"))]
    assert all(not torch.equal(model[f"backbone.{key}"], saved[key]) for key in layer4)  # unfrozen: trained, statistics updated
    assert not torch.equal(model["head.weight"], first["head.weight"])  # the head trained in epoch 2
    assert model["head.weight"].shape == (2, 512)

    groups = last["optimizer"]["state"]["param_groups"]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    layer4_params = sum(1 for key in saved if key.startswith("layer4.") and not key.endswith(buffers))
    assert [len(group["params"]) for group in groups] == [2, layer4_params]  # head, layer4: frozen parameters never reach the optimizer
    assert [group["initial_lr"] for group in groups] == [0.001, 0.0001]


@pytest.mark.slow
def test_checkpoint_reloads_strictly_and_evaluates_on_test_split(trained):
    checkpoint = load_checkpoint(trained / "best.pth")
    config = Config.from_dict(checkpoint.config, "checkpoint", trusted=False)  # what test.py does, in-process
    model = config.init_obj("arch")
    loaded = load_weights(model, checkpoint.weights(), strict=True, source="best.pth")
    assert loaded.missing == loaded.unexpected == loaded.wrong_shape == loaded.excluded == [] and len(loaded.loaded) == len(model.state_dict())
    loader = config.init_obj("data_loader", training=False)
    assert len(loader.dataset) == 8  # test/ (4 per class), not val/ (6 per class)
    results = Evaluator(model.eval(), build_loss(config), build_metrics(config), torch.device("cpu")).evaluate(loader)
    assert 0.0 <= results["accuracy"] <= 1.0 and results["loss"] > 0


@pytest.mark.slow
def test_weights_name_offline_is_a_one_line_error(tmp_path, images):
    overrides = [*transfer_overrides(images, tmp_path, "IMAGENET1K_V1"), "trainer.epochs=1"]
    env = {**OFFLINE, **THREADS, "TORCH_HOME": str(tmp_path / "torch_home")}
    result = run_here("train.py", "-c", "configs/transfer.json", *overrides, env=env)
    assert result.returncode == 2, result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "arch.args.weights: cannot download resnet18 weights 'IMAGENET1K_V1'" in lines[0]
    assert "torch.save(" in lines[0] and "set arch.args.weights to its path" in lines[0]
    assert not list((tmp_path / "torch_home").rglob("*.pth"))


def test_frozen_modules_stay_in_eval_mode_and_out_of_the_gradient():
    model = TransferClassifier(num_classes=3, backbone="resnet18", freeze="backbone")
    model.train()
    assert model.frozen == ["backbone"]
    assert all(not module.training for module in model.backbone.modules())
    assert model.head.training and model.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)

    partial = TransferClassifier(num_classes=2, freeze=["backbone.layer1", "backbone.bn1"]).train()
    assert partial.frozen == ["backbone.bn1", "backbone.layer1"]
    assert not partial.backbone.layer1[0].bn1.training and partial.backbone.layer2[0].bn1.training
    assert partial.backbone.conv1.weight.requires_grad and not partial.backbone.layer1[0].conv1.weight.requires_grad


def test_model_mistakes_are_user_errors(tmp_path, pretrained):
    with pytest.raises(UserError, match=r"arch.args.freeze: no module .*'backbone.layer9'"):
        TransferClassifier(num_classes=2, freeze=["backbone.layer9"])
    with pytest.raises(UserError, match="arch.args.freeze: expected"):
        TransferClassifier(num_classes=2, freeze=True)
    with pytest.raises(UserError, match="did you mean 'resnet18'"):
        TransferClassifier(num_classes=2, backbone="resnet81")
    with pytest.raises(UserError, match="file .*missing.pth not found"):
        TransferClassifier(num_classes=2, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="has no torchvision weights 'IMAGENET9K'"):
        TransferClassifier(num_classes=2, weights="IMAGENET9K")
    _, state = pretrained
    wrong = tmp_path / "wrong.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, wrong)
    with pytest.raises(UserError, match=r"does not fit arch.args.backbone \(missing \['layer4"):
        TransferClassifier(num_classes=2, weights=str(wrong))


def test_image_folder_loader(tmp_path, images):
    loader = ImageFolderDataLoader(str(images), batch_size=5, image_size=32, num_workers=0)
    assert loader.classes == ["blue", "red"] and len(loader.dataset) == 24
    valid = loader.split_validation()
    assert len(valid.dataset) == 12 and not valid.training
    inputs, target = next(iter(valid))
    assert inputs.shape == (5, 3, 32, 32) and target.tolist() == [0] * 5  # in order, no shuffle
    assert len(ImageFolderDataLoader(str(images), image_size=32, training=False).dataset) == 8  # test/

    no_test = tmp_path / "no_test"
    no_test.mkdir()
    for split in ("train", "val"):
        (no_test / split).symlink_to(images / split)
    assert len(ImageFolderDataLoader(str(no_test), image_size=32, training=False).dataset) == 12  # falls back to val/

    with pytest.raises(UserError, match="data_dir: .* is not a folder"):
        ImageFolderDataLoader(str(tmp_path / "nowhere"))
    (tmp_path / "only_train").mkdir()
    (tmp_path / "only_train" / "train").symlink_to(images / "train")
    with pytest.raises(UserError, match=r"data_dir: .*only_train has no val/ folder"):
        ImageFolderDataLoader(str(tmp_path / "only_train"))
    green = tmp_path / "only_train" / "val" / "green"
    green.mkdir(parents=True)
    with pytest.raises(UserError, match=r"data_dir: .*val: Found no valid file"):
        ImageFolderDataLoader(str(tmp_path / "only_train"))
    (green / "0.png").write_bytes((images / "val" / "red" / "0.png").read_bytes())
    with pytest.raises(UserError, match=r"has classes \['green'\] but train/ has \['blue', 'red'\]"):
        ImageFolderDataLoader(str(tmp_path / "only_train"))


def test_config_builds_and_runs_one_batch(images, pretrained):
    config = Config.from_file(ROOT / "configs/transfer.json", transfer_overrides(images, "/unused", pretrained[0]))
    loader = config.init_obj("data_loader")
    model = config.init_obj("arch")
    assert config["arch"]["args"]["num_classes"] == len(loader.classes)
    optimizer = build_optimizer(config, model)
    assert len(optimizer.param_groups) == 2
    build_lr_scheduler(config, optimizer)
    inputs, target = next(iter(loader))
    output = model(inputs)
    loss = build_loss(config)(output, target)
    loss.backward()
    metrics = MetricSet(build_metrics(config), torch.device("cpu"))
    metrics.update(output.detach(), target, len(target))
    values = metrics.compute()
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in values.values() if isinstance(v, float))
    assert len(values["confusion"]) == 2  # a 2 x 2 confusion matrix


@pytest.mark.slow
def test_predict_writes_a_row_per_unlabelled_image_with_its_path(trained, tmp_path):
    folder = tmp_path / "new"
    write_images(folder / "batch1", 6, (200, 40, 40), seed=5)
    write_images(folder / "batch2", 4, (40, 40, 200), seed=6)
    out = tmp_path / "new.csv"
    result = run_here("predict.py", "-r", str(trained / "best.pth"), "--input", str(folder), "--out", str(out), env=THREADS)
    assert result.returncode == 0, result.stderr + result.stdout
    rows = list(csv.DictReader(out.open()))
    assert [row["path"] for row in rows] == [f"batch1/{i}.png" for i in range(6)] + [f"batch2/{i}.png" for i in range(4)]
    assert [int(row["index"]) for row in rows] == list(range(10))
    assert {row["label"] for row in rows} <= {"blue", "red"} and "target" not in rows[0]
    assert all(abs(float(row["output_0"]) + float(row["output_1"]) - 1) < 1e-5 for row in rows)
