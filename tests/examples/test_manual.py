"""The manual's "Write your own" snippets (and those of docs/write-your-own.md) run as written, on the shipped examples they name (digits, MLP): these tests leave with the examples.

Each Python snippet starts with the file a user would put it in (``# model/mixup.py``); it is
written to a temporary module (``readme_mixup``) and each JSON fragment that names it is merged
into the tiny digits experiment, then trained in-process. The temporary modules are outside the
project's source packages, so the runs pass ``--trust-checkpoint`` (in ``model/`` they would not).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.data import tiny_dataset as digits_dataset
from helpers import ROOT, metric_rows, tiny_config, write_config

import train
from logger.logger import close_log_files

MANUAL = ROOT / "TEMPLATE.md" if (ROOT / "TEMPLATE.md").exists() else ROOT / "README.md"  # a new project keeps the manual as TEMPLATE.md
SECTION = re.search(r"^## Write your own\n(.*?)^## ", MANUAL.read_text(), re.DOTALL | re.MULTILINE).group(1)
SECTION += (ROOT / "docs" / "write-your-own.md").read_text()  # the section's two further snippets
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", SECTION, re.DOTALL | re.MULTILINE)


def module_name(path: str) -> str:
    return "readme_" + Path(path).stem


@pytest.fixture(scope="module")
def snippets(tmp_path_factory) -> dict:
    """The Python snippets importable by their README paths' module names; the JSON fragments by what they name."""
    folder = tmp_path_factory.mktemp("readme")
    sys.path.insert(0, str(folder))
    fragments = []
    for language, text in BLOCKS:
        if language == "python":
            path = text.splitlines()[0].removeprefix("# ").strip()
            assert path.endswith(".py") and path.split("/")[0] in ("model", "data_loader"), path
            (folder / f"{module_name(path)}.py").write_text(text)
        elif language == "json":
            fragment = re.sub(r"(model|data_loader)\.(\w+):", lambda m: f"{module_name(m.group(2))}:", text)
            fragments.append(json.loads("{" + fragment + "}"))
    yield {"fragments": fragments, "folder": folder}
    sys.path.remove(str(folder))


def merged(config: dict, fragment: dict) -> dict:
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict) and key != "arch":
            config[key].update(value)
        else:
            config[key] = value
    return config


def fragment_with(snippets: dict, word: str) -> dict:
    return next(f for f in snippets["fragments"] if word in json.dumps(f))


def train_main(*args) -> int:
    with contextlib.redirect_stdout(None):
        try:
            return train.main([str(a) for a in args])
        finally:
            close_log_files()


def test_every_snippet_is_here():
    languages = [language for language, _ in BLOCKS]
    assert languages.count("python") == 5 and languages.count("json") == 4 and languages.count("bash") == 1


def test_a_loader_with_its_own_validation_files(tmp_path, snippets):
    images, labels = digits_dataset(training=True).tensors
    for name, part in (("train.pt", slice(0, 1000)), ("val.pt", slice(1000, 1200)), ("test.pt", slice(1200, None))):
        torch.save((images[part], labels[part]), tmp_path / name)
    config = tiny_config(tmp_path, epochs=1, limit_batches=2)
    config["data_loader"] = {"type": "readme_tensor_files:TensorFilesDataLoader", "args": {"data_dir": str(tmp_path), "batch_size": 50}}
    assert train_main("-c", write_config(tmp_path, config), "--run-id", "files", "--trust-checkpoint") == 0
    run_dir = tmp_path / "saved" / "tiny" / "files"
    assert "1,000 training samples, 200 validation samples" in (run_dir / "train.log").read_text()
    config["data_loader"]["args"]["batchsize"] = 8
    assert train_main("-c", write_config(tmp_path, config, "typo.json"), "--trust-checkpoint") == 2


def test_a_scaler_fitted_on_the_training_split_only(tmp_path, snippets):
    import readme_scaled_csv

    images, labels = digits_dataset(training=True).tensors
    table = np.concatenate([images.flatten(1).numpy() * 3 + 5, labels.numpy()[:, None]], axis=1)
    np.savetxt(tmp_path / "train.csv", table[:1000], delimiter=",")
    np.savetxt(tmp_path / "test.csv", table[1000:], delimiter=",")
    for folds in (0, 3):
        loader = readme_scaled_csv.ScaledCsvDataLoader(str(tmp_path), batch_size=32, folds=folds, fold=1)
        features = loader.dataset.dataset.tensors[0][loader.dataset.indices]  # the training part, scaled by its own statistics
        assert torch.allclose(features.mean(0), torch.zeros(64), atol=1e-4)
        assert len(loader.valid_subset) == (200 if not folds else len(loader.split["validation"]))
    config = tiny_config(tmp_path, epochs=1, limit_batches=2)
    config["arch"] = {"type": "fixtures.model:MLP", "args": {"in_features": 64, "num_classes": 10}}
    config["data_loader"] = {"type": "readme_scaled_csv:ScaledCsvDataLoader", "args": {"data_dir": str(tmp_path), "batch_size": 64}}
    assert train_main("-c", write_config(tmp_path, config), "--run-id", "csv", "--trust-checkpoint") == 0


def test_mixup_trains_and_resumes_bitwise(tmp_path, snippets):
    config = merged(tiny_config(tmp_path, limit_batches=4), fragment_with(snippets, "MixupTrainer"))
    for epochs, run_id in ((2, "whole"), (1, "half")):
        config["trainer"]["epochs"] = epochs
        assert train_main("-c", write_config(tmp_path, config, f"{run_id}.json"), "--run-id", run_id, "--trust-checkpoint") == 0
    saved = tmp_path / "saved" / "tiny"
    assert train_main("-r", saved / "half" / "checkpoints" / "last.pth", "trainer.epochs=2", "--trust-checkpoint") == 0
    whole, resumed = (torch.load(saved / r / "checkpoints" / "last.pth", weights_only=True)["model"] for r in ("whole", "half"))
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def test_an_autoencoder_whose_loss_takes_the_inputs(tmp_path, snippets):
    config = merged(tiny_config(tmp_path, epochs=3, limit_batches=6), fragment_with(snippets, "reconstruction_loss"))
    config["trainer"]["monitor"] = "min val_loss"
    assert train_main("-c", write_config(tmp_path, config), "--run-id", "ae", "--trust-checkpoint") == 0
    rows = metric_rows(tmp_path / "saved" / "tiny" / "ae")
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]


def test_a_metric_function(tmp_path, snippets):
    config = merged(tiny_config(tmp_path, epochs=1, limit_batches=2), fragment_with(snippets, "mean_confidence"))
    assert train_main("-c", write_config(tmp_path, config), "--run-id", "m", "--trust-checkpoint") == 0
    row = metric_rows(tmp_path / "saved" / "tiny" / "m")[0]
    assert 0.0 < row["confidence"] <= 1.0 and 0.0 < row["val_confidence"] <= 1.0


def test_a_fine_tune_with_a_new_head(tmp_path, snippets):
    command = next(text for language, text in BLOCKS if language == "bash").split()
    assert command[:3] == ["python", "train.py", "-r"] and command[4] == "-c"
    config = tiny_config(tmp_path, epochs=1, limit_batches=2)
    assert train_main("-c", write_config(tmp_path, config), "--run-id", "base") == 0
    source = tmp_path / "saved" / "tiny" / "base" / "checkpoints" / "best.pth"
    finetune = merged(tiny_config(tmp_path, limit_batches=2), fragment_with(snippets, "load_exclude"))
    assert finetune["arch"]["type"] == "DigitsCNN"  # the manual's fragment: the digits CNN with a new head
    finetune["arch"]["type"] = config["arch"]["type"]  # the fixtures' CNN: the same layers, whatever this project's model/ holds
    finetune["trainer"]["epochs"] = 1
    assert train_main("-r", source, "-c", write_config(tmp_path, finetune, "finetune.json"), "--run-id", "tuned") == 0
    before = torch.load(source, weights_only=True)["model"]
    after = torch.load(tmp_path / "saved" / "tiny" / "tuned" / "checkpoints" / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("conv1", "conv2")))
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])
    log = (tmp_path / "saved" / "tiny" / "tuned" / "train.log").read_text()
    assert "loaded 6 tensors" in log and "excluded (trainer.load_exclude, kept as initialised): 2" in log


COMMANDS = [
    line.split("#")[0].split()
    for block in re.findall(r"^```bash\n(.*?)^```", MANUAL.read_text(), re.DOTALL | re.MULTILINE)
    for command in block.splitlines()
    for line in command.split("&&")
    if line.strip()
]


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(words)[:60] for words in COMMANDS])
def test_every_readme_command_is_one_the_project_takes(words):
    """Each shell line of the README names a Makefile target, or a script and flags its parser accepts."""
    import importlib

    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE)
        named = {word for word in words[1:] if "=" not in word}  # DIR=... sets a make variable
        assert named <= set(targets), f"make {words[1:]}: the Makefile has {targets}"
    elif words[0] in ("python", ".venv/bin/python"):
        if not (ROOT / words[1]).exists():
            pytest.skip(f"{words[1]} stays in the template; this project was made from it")
        script = importlib.import_module(Path(words[1]).stem)
        script.parse_args(words[2:])  # argparse exits (and the test fails) on a flag it does not know
    else:
        assert words[0] in ("cd", "git"), f"a README command the test does not know how to check: {words}"
