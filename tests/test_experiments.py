"""Generated tests of the project's experiments: ``config.json`` and every run config under
``configs/`` (``*.json``, ``*.yaml``, ``*.yml``; a sweep search space, a file with a top-level
``params``, is not a run config), whatever each one holds: your data, model, loss, metrics, name.

For each, tiny (``TINY_OVERRIDES``: 2 batches per epoch, CPU, no workers, written under a
temporary folder), in-process: ``train.py`` builds it and takes its pre-flight batch, trains two
epochs, a second run trains one and is resumed to two with ``-r``, and its weights must equal the
uninterrupted run's; then ``test.py`` and ``predict.py`` run on the result. A broken config (a
wrong ``arch.args``, a monitor naming a metric the run does not produce) fails here. You add no
test line when you add or replace an experiment.

A config that cannot run tiny here (its data or pretrained weights are not on this machine) says
so in ``pyproject.toml``, with the reason the skipped test reports::

    [tool.pytorch-template.experiment-tests.skip]
    "configs/mnist.json" = "needs MNIST under data/ (a download)"
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, run_here

TINY_OVERRIDES = (
    "trainer.limit_batches=2",
    "trainer.tensorboard=false",
    "trainer.early_stop=0",
    "trainer.save_period=100",
    "device=cpu",
)


SEEN: dict[str, Path] = {}
"""Resolved config digest -> the first config file tested with it: a second file that resolves to
the same experiment is not trained twice."""


def experiment_configs() -> list[Path]:
    """config.json and the run configs under configs/ (not the sweep search spaces)."""
    found = [ROOT / "config.json"] if (ROOT / "config.json").is_file() else []
    for path in sorted(p for ext in ("json", "yaml", "yml") for p in (ROOT / "configs").glob(f"*.{ext}")):
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        if not (isinstance(data, dict) and "params" in data):
            found.append(path)
    return found


def skipped() -> dict[str, str]:
    """``[tool.pytorch-template.experiment-tests.skip]``: config path (from the project root) -> why."""
    with open(ROOT / "pyproject.toml", "rb") as handle:
        table = tomllib.load(handle).get("tool", {}).get("pytorch-template", {})
    return table.get("experiment-tests", {}).get("skip", {})


def loader_overrides(path: Path) -> list[str]:
    """No worker processes, when the config's loader has the argument (a tiny run gains nothing from them)."""
    from app.config import Config

    args = Config.from_file(path).to_dict()["data_loader"].get("args") or {}
    return ["data_loader.args.num_workers=0"] if "num_workers" in args else []


def train(path: Path, save_dir: Path, *args: str):
    result = run_here("train.py", *args, f"trainer.save_dir={save_dir}", *TINY_OVERRIDES, *loader_overrides(path))
    assert result.returncode == 0, f"{path.relative_to(ROOT)}: train.py {' '.join(args)}\n{result.stderr}"
    return result


def last(save_dir: Path, run_id: str) -> Path:
    (found,) = save_dir.glob(f"*/{run_id}/checkpoints/last.pth")
    return found


@pytest.fixture(scope="module", params=experiment_configs(), ids=lambda path: str(path.relative_to(ROOT)))
def experiment(request, tmp_path_factory) -> tuple[Path, Path]:
    """(config, save_dir): the config trained two epochs straight (``straight``) and one plus a resume (``split``)."""
    path: Path = request.param
    reason = skipped().get(str(path.relative_to(ROOT)))
    if reason:
        pytest.skip(f"{path.relative_to(ROOT)}: {reason} (pyproject.toml [tool.pytorch-template.experiment-tests.skip])")
    from app.config import Config

    digest = Config.from_file(path).digest()
    if digest in SEEN:  # e.g. configs/digits.yaml, config.json written in YAML
        pytest.skip(f"{path.relative_to(ROOT)}: the same experiment as {SEEN[digest].relative_to(ROOT)}, tested there")
    SEEN[digest] = path
    save_dir = tmp_path_factory.mktemp("experiment") / "saved"
    train(path, save_dir, "-c", str(path), "--run-id", "straight", "trainer.epochs=2")
    train(path, save_dir, "-c", str(path), "--run-id", "split", "trainer.epochs=1")
    train(path, save_dir, "-r", str(last(save_dir, "split")), "trainer.epochs=2")
    return path, save_dir


def test_it_trains_and_a_resume_gives_the_weights_of_an_uninterrupted_run(experiment):
    _, save_dir = experiment
    straight = torch.load(last(save_dir, "straight"), weights_only=True, map_location="cpu")
    resumed = torch.load(last(save_dir, "split"), weights_only=True, map_location="cpu")
    assert straight["progress"]["epoch"] == resumed["progress"]["epoch"] == 2
    assert straight["model"].keys() == resumed["model"].keys()
    differ = [key for key in straight["model"] if not torch.equal(straight["model"][key], resumed["model"][key])]
    assert not differ, f"a resume changed the result: {differ[:5]}"


def test_test_py_and_predict_py_run_on_the_result(experiment, tmp_path):
    path, save_dir = experiment
    checkpoint = str(last(save_dir, "straight"))
    tested = run_here("test.py", "-r", checkpoint, "--out", tmp_path / "metrics.json", *loader_overrides(path))
    assert tested.returncode == 0, tested.stderr
    assert "loss" in json.loads((tmp_path / "metrics.json").read_text())
    predicted = run_here("predict.py", "-r", checkpoint, "--out", tmp_path / "predictions.npz", *loader_overrides(path))
    assert predicted.returncode == 0, predicted.stderr
    assert (tmp_path / "predictions.npz").stat().st_size > 0
