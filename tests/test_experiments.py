"""Generated tests of the project's experiments: ``config.json`` and every run config under
``configs/`` (``*.json``, ``*.yaml``, ``*.yml``; a sweep search space, a file with a top-level
``params``, is not a run config), whatever each one holds: your data, model, loss, metrics, name.

For each, tiny (``TINY_OVERRIDES``: 2 batches per epoch, CPU, no workers, written under a
temporary folder), in-process: ``train.py`` builds it and takes its pre-flight batch, trains two
epochs, a second run trains one and is resumed to two with ``-r``, and its weights must equal the
uninterrupted run's; then ``test.py`` and ``predict.py`` run on the result. A broken config (a
wrong ``arch.args``, a monitor naming a metric the run does not produce) fails here. Each sweep
search space is read against its experiment (:func:`experiment_of`); a base that other configs
extend and that is no whole experiment on its own is skipped, naming them (:func:`only_a_base`).
You add no test line when you add or replace an experiment.

A config that cannot run tiny here (its data or pretrained weights are not on this machine) says
so in ``pyproject.toml``, with the reason the skipped test reports::

    [tool.pytorch-template.experiment-tests.skip]
    "configs/mnist.json" = "needs MNIST under data/ (a download)"
"""

from __future__ import annotations

import functools
import json
import tomllib
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT, run_here

from app.config import Config, build_loss, build_lr_scheduler, build_metrics, build_optimizer, read_config
from trainer import Evaluator
from trainer.optimizers import Schedules
from utils.errors import UserError

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


@functools.cache
def config_files(spaces: bool) -> tuple[Path, ...]:
    """The files under configs/ that are sweep search spaces (a top-level ``params``), or the others
    (read once a session, as every function here that reads the project's files)."""
    found = []
    for path in sorted(p for ext in ("json", "yaml", "yml") for p in (ROOT / "configs").glob(f"*.{ext}")):
        data = read_raw(path)
        if (isinstance(data, dict) and "params" in data) == spaces:
            found.append(path)
    return tuple(found)


def experiment_configs() -> list[Path]:
    """config.json and the run configs under configs/ (not the sweep search spaces)."""
    return ([ROOT / "config.json"] if (ROOT / "config.json").is_file() else []) + list(config_files(spaces=False))


def read_raw(path: Path):
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


@functools.cache
def extended_by() -> dict[Path, list[Path]]:
    """Base file -> the experiment configs that name it in ``extends`` (paths relative to each file)."""
    found: dict[Path, list[Path]] = {}
    for path in experiment_configs():
        data = read_raw(path)
        named = data.get("extends", []) if isinstance(data, dict) else []
        for base in [named] if isinstance(named, str) else named if isinstance(named, list) else []:
            found.setdefault((path.parent / str(base)).resolve(), []).append(path)
    return found


def only_a_base(path: Path) -> str | None:
    """Why ``path`` is not trained: it is a base other configs extend and is no whole experiment on
    its own (it does not validate). A file nothing extends is always an experiment: its error fails."""
    children = extended_by().get(path.resolve())
    if not children:
        return None
    try:
        Config.from_file(path)
    except UserError as exc:
        names = ", ".join(str(child.relative_to(ROOT)) for child in children)
        return f"{path.relative_to(ROOT)}: a base that {names} extends, not an experiment on its own ({str(exc).splitlines()[0][:160]})"
    return None


def skip_reason(path: Path) -> str | None:
    """The skip table's reason for ``path``, or why it is only a base; None: it is trained."""
    reason = skipped().get(str(path.relative_to(ROOT)))
    if reason:
        return f"{path.relative_to(ROOT)}: {reason} (pyproject.toml [tool.pytorch-template.experiment-tests.skip])"
    return only_a_base(path)


def experiment_of(space: Path) -> Path:
    """The experiment a sweep space searches: ``configs/<stem>.*`` for ``configs/<stem>_space.*`` when
    there is one (``digits_space.yaml`` -> ``digits.yaml``), else ``config.json``."""
    stem = space.stem.removesuffix("_space")
    paired = [path for path in config_files(spaces=False) if path.stem == stem and stem != space.stem]
    return paired[0] if paired else ROOT / "config.json"


@functools.cache
def skipped() -> dict[str, str]:
    """``[tool.pytorch-template.experiment-tests.skip]``: config path (from the project root) -> why."""
    with open(ROOT / "pyproject.toml", "rb") as handle:
        table = tomllib.load(handle).get("tool", {}).get("pytorch-template", {})
    return table.get("experiment-tests", {}).get("skip", {})


@functools.cache
def loader_overrides(path: Path) -> tuple[str, ...]:
    """No worker processes, when the config's loader has the argument (a tiny run gains nothing from them)."""
    args = Config.from_file(path).to_dict()["data_loader"].get("args") or {}
    return ("data_loader.args.num_workers=0",) if "num_workers" in args else ()


def train(path: Path, save_dir: Path, *args: str):
    result = run_here("train.py", *args, f"trainer.save_dir={save_dir}", *TINY_OVERRIDES, *loader_overrides(path))
    assert result.returncode == 0, f"{path.relative_to(ROOT)}: train.py {' '.join(args)}\n{result.stderr}"
    return result


def last(save_dir: Path, run_id: str) -> Path:
    (found,) = save_dir.glob(f"*/{run_id}/checkpoints/last.pth")
    return found


def _needs_missing_files(args: dict) -> str | None:
    """The first path-like argument that does not exist (data that only users have)."""
    for key, value in args.items():
        if isinstance(value, str) and (key.endswith(("_dir", "_path", "_file")) or key == "root"):
            path = Path(value) if Path(value).is_absolute() else ROOT / value
            if not path.exists():
                return f"{key}={value}"
    return None


@pytest.mark.parametrize("path", experiment_configs(), ids=lambda path: str(path.relative_to(ROOT)))
def test_it_loads_validates_and_builds_even_where_it_cannot_run_tiny(path):
    """Model, loss, metrics, optimizer and schedule from the config, and one batch evaluated where its
    data is here: checked for the configs the skip table keeps from training too."""
    base = only_a_base(path)
    if base:
        pytest.skip(base)
    data = read_config(path)  # through the bases it extends
    overrides = []
    if "weights" in data["arch"].get("args", {}) and not (ROOT / str(data["arch"]["args"]["weights"])).is_file():
        overrides.append("arch.args.weights=null")  # a weights name means a download; tests never download
    config = Config.from_dict(data, str(path), overrides)
    model = config.init_obj("arch")
    criterion, metrics = build_loss(config), build_metrics(config)
    optimizer = build_optimizer(config, model)
    scheduler = build_lr_scheduler(config, optimizer)
    assert any(p.requires_grad for p in model.parameters())
    built = bool(scheduler.schedules) if isinstance(scheduler, Schedules) else scheduler is not None  # several optimizers: one per name
    assert built == (config["lr_scheduler"] is not None)
    assert len(metrics) == len(config["metrics"])

    args = dict(config["data_loader"].get("args") or {})
    if isinstance(scheduler, Schedules):
        return  # several optimizers: its losses come from its own step (the tests below train it)
    if _needs_missing_files(args):
        return  # its data is the user's to provide: the rest of the config is checked above
    offline = ["data_loader.args.download=false"] if "download" in args or config["data_loader"]["type"] == "MnistDataLoader" else []
    try:
        loader = Config.from_dict(config.to_dict(), str(path), [*loader_overrides(path), *offline]).init_obj("data_loader")
    except UserError as exc:
        if "data_loader.args.data_dir" in str(exc):
            return  # the folder exists but holds other data (e.g. data/ without MNIST, and no download in tests)
        raise
    results = Evaluator(model, criterion, metrics, torch.device("cpu")).evaluate(islice(loader, 1))
    assert set(results) == {"loss", *metrics} and np.isfinite(results["loss"])


@pytest.fixture(scope="module", params=experiment_configs(), ids=lambda path: str(path.relative_to(ROOT)))
def experiment(request, tmp_path_factory) -> tuple[Path, Path]:
    """(config, save_dir): the config trained two epochs straight (``straight``) and one plus a resume (``split``)."""
    path: Path = request.param
    reason = skip_reason(path)
    if reason:
        pytest.skip(reason)
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


SPACES = [pytest.param(path, id=str(path.relative_to(ROOT))) for path in config_files(spaces=True)] or [
    pytest.param(None, id="none", marks=pytest.mark.skip(reason="no sweep search spaces in configs/ (files with a top-level params)"))
]


@pytest.mark.parametrize("space", SPACES)
def test_each_sweep_space_reads_against_its_experiment(space):
    """Every parameter a space names is one its experiment has, with values it accepts (``sweep.py``'s
    own checks, before any trial). The experiment: :func:`experiment_of`."""
    from app.sweeps.space import read_space

    config = experiment_of(space)
    reason = skip_reason(config)
    if reason:
        pytest.skip(reason)
    read = read_space(str(space), None, Config.from_file(str(config)), str(config), [])
    assert read.trials >= 1 and read.params
