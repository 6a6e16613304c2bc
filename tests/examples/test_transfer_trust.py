"""A checkpoint of the transfer example runs no code and fetches nothing (``utils/fetching.py``): its
config names torchvision's pretrained weights, and a pickle planted in torch's hub cache, where
``torch.hub`` would unpickle it with ``weights_only=False``, never runs; an empty cache is never
filled or even created. The checkpoints are real ones of a tiny TransferClassifier run (a
torchvision ShuffleNet backbone on 32x32 images), edited as a stranger could. These tests leave with
the transfer example; the rest of the rule is tested on fixtures in tests/test_no_code_from_checkpoints.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import example_or_skip, plant, run_here, save_crafted, tree, write_images

example_or_skip("transfer", "model.metric:Accuracy")  # what it uses of the files a user rewrites first

THREADS = {"OMP_NUM_THREADS": "1"}
BACKBONE = "shufflenet_v2_x0_5"
CACHED_NAME = "shufflenetv2_x0.5-f707e7126e.pth"  # torchvision's file name for its IMAGENET1K_V1 weights


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 1-epoch TransferClassifier run (random backbone); returns its checkpoints folder."""
    root = tmp_path_factory.mktemp("transfer")
    images = root / "images"
    for split, count in (("train", 8), ("val", 4), ("test", 4)):
        write_images(images / split / "red", count, (200, 40, 40), seed=len(split))
        write_images(images / split / "blue", count, (40, 40, 200), seed=len(split) + 100)
    overrides = [
        f"data_loader.args.data_dir={images}",
        "data_loader.args.image_size=32",
        "data_loader.args.batch_size=8",
        "data_loader.args.num_workers=0",
        "data_loader.args.augment=false",
        f"arch.args.backbone={BACKBONE}",
        "arch.args.weights=null",
        "arch.args.freeze=null",
        "optimizer.param_groups=[]",
        "metrics=[accuracy]",
        f"trainer.save_dir={root / 'saved'}",
        "trainer.tensorboard=false",
        "trainer.epochs=1",
        "trainer.early_stop=0",
    ]
    result = run_here("train.py", "-c", "configs/transfer.json", "--run-id", "run", *overrides, env=THREADS)
    assert result.returncode == 0, result.stderr + result.stdout
    return root / "saved" / "transfer_resnet18" / "run"


@pytest.fixture
def world(tmp_path, run):
    """A copy of the run, a TORCH_HOME of this test's own (set while the test runs), and the marker."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    home = tmp_path / "torch-home"
    before = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield copy, home, tmp_path / "MARKER"
    if before is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = before


def stranger(checkpoint: Path, change) -> Path:
    state = torch.load(checkpoint, weights_only=True)
    change(state["config"])
    save_crafted(state, checkpoint)
    return checkpoint


def with_imagenet_weights(config: dict) -> None:
    config["arch"]["args"]["weights"] = "IMAGENET1K_V1"


def torchvision_builder(config: dict) -> None:
    config["arch"] = {"type": f"torchvision.models:{BACKBONE}", "args": {"weights": "IMAGENET1K_V1"}}


def lpips_metric(config: dict) -> None:
    config["metrics"] = [
        {"type": "torchmetrics.image:LearnedPerceptualImagePatchSimilarity", "args": {"net_type": "squeeze"}, "name": "accuracy"}
    ]


def one_error_line(result) -> str:
    lines = result.stderr.rstrip("\n").splitlines()
    assert "Traceback" not in result.stderr and lines and lines[-1].startswith("error: "), result.stderr[-3000:]
    assert sum(line.startswith("error: ") for line in lines) == 1, result.stderr[-3000:]
    return lines[-1]


@pytest.mark.parametrize("script", ["test.py", "predict.py", "train.py"])
def test_pretrained_weights_in_a_checkpoints_config_are_neither_read_nor_fetched(script, world, tmp_path):
    """A run that used pretrained weights holds them in its checkpoint: rebuilding its model reads
    no cache (a planted pickle there stays unrun) and the run is tested, predicted and resumed."""
    copy, home, marker = world
    plant(home / "hub" / "checkpoints", CACHED_NAME, marker)
    cache = tree(home)
    last = stranger(copy / "checkpoints" / "last.pth", with_imagenet_weights)
    extra = {"test.py": [], "predict.py": ["--out", tmp_path / "p.jsonl"], "train.py": ["trainer.epochs=2"]}[script]
    result = run_here(script, "-r", last, *extra, env=THREADS)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    assert not marker.exists()
    assert tree(home) == cache


@pytest.mark.parametrize(
    "script, change, cache",
    [
        ("test.py", torchvision_builder, "planted"),
        ("predict.py", torchvision_builder, "empty"),
        ("train.py", torchvision_builder, "empty"),
        ("test.py", lpips_metric, "planted"),
    ],
    ids=["test.py builder, planted", "predict.py builder, empty cache", "train.py builder, empty cache", "test.py LPIPS, planted"],
)
def test_a_checkpoint_whose_names_would_fetch_is_one_line_and_runs_nothing(script, change, cache, world, tmp_path):
    """A planted file is never read (so never run); an empty cache is never created, nothing downloads."""
    copy, home, marker = world
    if cache == "planted":
        plant(home / "hub" / "checkpoints", CACHED_NAME, marker)
        plant(home / "hub" / "checkpoints", "squeezenet1_1-b8a52dc0.pth", marker)  # LPIPS' squeeze net
    last = stranger(copy / "checkpoints" / "last.pth", change)
    before = tree(tmp_path)
    extra = ["--out", tmp_path / "p.jsonl"] if script == "predict.py" else []
    result = run_here(script, "-r", last, *extra, env=THREADS)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result)
    assert "fetch a file through torch.hub" in line and "may not download or read cached files" in line, line
    assert ("arch.type" if change is torchvision_builder else "metrics.0.type") in line, line
    assert not marker.exists()
    assert tree(tmp_path) == before  # the cache as it was: not read, not created
    assert home.exists() == (cache == "planted")
    assert "Downloading" not in result.stdout + result.stderr


def test_a_trusted_config_checks_the_published_hash_of_a_cached_file(world, tmp_path):
    """``-c`` is trusted like code, yet a planted file under torchvision's name is refused: its hash
    is not the one its name publishes (checked on every read, not only after a download)."""
    copy, home, marker = world
    plant(home / "hub" / "checkpoints", CACHED_NAME, marker)
    config = copy / "config.json"
    result = run_here("train.py", "-c", config, "arch.args.weights=IMAGENET1K_V1", f"trainer.save_dir={tmp_path / 'new'}", env=THREADS)
    assert result.returncode == 2
    line = one_error_line(result)
    assert CACHED_NAME in line and "does not match its published hash f707e7126e" in line, line
    assert not marker.exists() and not (tmp_path / "new").exists()
