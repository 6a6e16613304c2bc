"""Bad inputs and faults (issue "Never lose a run, never run a checkpoint's code").

Every user mistake or fault is ONE ``error: ...`` line on stderr naming the key, file or flag and
the fix, exit code 2, no traceback, and nothing lost or left behind: no run directory for a run
that failed before training, no half-written file, an existing run directory byte for byte as it
was. A bug in the user's own code (``tests/user_bugs.py`` stands for ``model/`` and
``data_loader/``) is a traceback into the user's file and line with a one-line hint, exit code 1.
A checkpoint is data: a config inside it that names code outside the project is refused by
``train.py -r``, ``test.py -r`` and ``predict.py -r`` unless ``--trust-checkpoint`` or ``-c`` is given.

``ROWS`` runs the scripts' ``main(argv)`` in-process (fast) from the project root, as a user
would run them; what needs a real process (signals, locks, permissions, file-size limits, the
exit code of the script itself) is in the ``slow`` tests below the table.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, TESTS_ENV, TINY, changes, entry_point, save_crafted, set_key, tiny_config, tree, write_config

import predict
import sweep
import train
from app.config import Config, build_loss
from logger.logger import close_log_files

USER_BUGS = ROOT / "tests" / "user_bugs.py"
THREADS = {"OMP_NUM_THREADS": "1"}


MAINS = {"train": train.main, "test": entry_point("test.py"), "predict": predict.main, "sweep": sweep.main}


def bug_at(marker: str) -> str:
    """``tests/user_bugs.py:<line>`` of the line marked ``# BUG: <marker>``."""
    for number, line in enumerate(USER_BUGS.read_text().splitlines(), 1):
        if f"# BUG: {marker}" in line:
            return f"tests/user_bugs.py:{number}"
    raise AssertionError(f"no '# BUG: {marker}' line in {USER_BUGS}")


# -- what a directory holds, byte for byte ----------------------------------------------------------


# -- one finished run and one stopped mid-epoch, shared (rows work on copies) ------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A 2-epoch run with Adam, StepLR, TensorBoard and epoch-1/epoch-2/best/last checkpoints."""
    tmp = tmp_path_factory.mktemp("finished")
    config = write_config(tmp, tiny_config(tmp, epochs=2, save_period=1, keep_last=0, limit_batches=3, tensorboard=True))
    with contextlib.redirect_stdout(None):
        assert train.main(["-c", str(config), "--run-id", "run"]) == 0
    close_log_files()
    run_dir = tmp / "saved" / "tiny" / "run"
    assert {"metrics.jsonl", "config.json", "train.log"} <= {p.name for p in run_dir.iterdir()}
    assert list(run_dir.glob("events.out.tfevents.*"))
    return run_dir


@pytest.fixture(scope="module")
def mid_epoch(tmp_path_factory) -> Path:
    """A run stopped by a real SIGTERM after its second training batch: ``last.pth`` is mid-epoch."""
    tmp = tmp_path_factory.mktemp("mid_epoch")
    config = tiny_config(tmp, epochs=1, limit_batches=6)
    config["arch"]["type"] = "fault_injection:SignalingDigitsCNN"
    os.environ.update(SIGNAL_AT_BATCH="3", SIGNAL_NAME="SIGTERM")  # pass 1 is the pre-flight batch
    try:
        with contextlib.redirect_stdout(None):
            code = train.main(["-c", str(write_config(tmp, config)), "--run-id", "mid", "--trust-checkpoint"])
    finally:
        del os.environ["SIGNAL_AT_BATCH"], os.environ["SIGNAL_NAME"]
        close_log_files()
    assert code == 128 + signal.SIGTERM
    run_dir = tmp / "saved" / "tiny" / "mid"
    assert torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["progress"]["batch_in_epoch"] == 2
    return run_dir


class Ctx:
    """A row's world: its own temporary folder, configs written there, copies of the shared runs."""

    def __init__(self, tmp: Path, finished: Path, mid_epoch: Path | None):
        self.tmp, self.finished, self.mid_epoch = tmp, finished, mid_epoch
        self.marker = tmp / "MARKER"  # what a checkpoint's code would create if it ran

    def config(self, change: Callable[[dict], None] | None = None, name: str = "config.json", replace: tuple = ()) -> Path:
        """A tiny 1-epoch config (saving under ``<tmp>/saved``), changed, then its text edited."""
        data = tiny_config(self.tmp, epochs=1, limit_batches=2)
        if change is not None:
            change(data)
        path = self.tmp / name
        text = yaml.safe_dump(data, sort_keys=False) if path.suffix in (".yaml", ".yml") else json.dumps(data, indent=1)
        for old, new in replace:
            assert old in text, old
            text = text.replace(old, new)
        path.write_text(text)
        return path

    def run(self, source: Path | None = None) -> Path:
        """A copy of the finished run (or ``source``) at ``<tmp>/saved/tiny/<its name>``."""
        source = source or self.finished
        target = self.tmp / "saved" / "tiny" / source.name
        if not target.exists():
            shutil.copytree(source, target)
        return target

    def ckpt(self, name: str = "last.pth") -> Path:
        return self.run() / "checkpoints" / name

    def crafted(self, change: Callable[[dict], None], name: str = "last.pth", source: Path | None = None) -> Path:
        """A copy of a run whose checkpoint ``name`` was edited by ``change`` (as a stranger could)."""
        path = self.run(source) / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        change(state)
        save_crafted(state, path)
        return path

    def evil(self, key: str) -> Path:
        """A checkpoint whose stored config names ``os:system`` for ``key``: running it creates the marker."""
        node = {"type": "os:system", "args": {"command": f"touch {self.marker}"}}

        def change(state: dict) -> None:
            state["config"][key] = [node] if key == "metrics" else node

        return self.crafted(change)


# -- the table ------------------------------------------------------------------------------------------


@dataclass
class Row:
    id: str
    script: str
    args: Callable[[Ctx], list]
    code: int
    expect: tuple[str, ...] = ()
    """Fragments of the ``error:`` line (exit code 2)."""
    bug: str | None = None
    """Exit code 1: the ``# BUG:`` marker of the user's line that the traceback must name."""
    xfail: str | None = None
    started_training: bool = False
    """The fault shows only once training runs: a run directory may stay (its train.log tells what happened)."""
    mid: bool = False


TEST_MODULES = ("user_bugs:", "fault_injection:")
"""Test modules stand in for the user's code but live in tests/, outside the project's source
packages: a run naming them says it trusts its own checkpoints (--trust-checkpoint)."""


def trusting(overrides: tuple) -> list[str]:
    return ["--trust-checkpoint"] if any(module in str(o) for o in overrides for module in TEST_MODULES) else []


def with_confusion_matrix(data: dict) -> None:
    data["metrics"] = json.loads(TINY.read_text())["metrics"]


def new(*overrides: str, change=None, name: str = "config.json", replace: tuple = ()) -> Callable[[Ctx], list]:
    """``train.py -c CONFIG [overrides]``: a new run."""
    return lambda c: ["-c", c.config(change, name, replace), *overrides, *trusting(overrides)]


def resume(*overrides: str, ckpt: str = "last.pth") -> Callable[[Ctx], list]:
    """``train.py -r <copy of the finished run>/checkpoints/<ckpt> [overrides]``."""
    return lambda c: ["-r", c.ckpt(ckpt), *overrides]


def evaluate(*more, ckpt: str = "last.pth") -> Callable[[Ctx], list]:
    """``test.py -r <copy>/checkpoints/<ckpt> ...``; ``more`` items may be functions of the row's Ctx."""
    return lambda c: ["-r", c.ckpt(ckpt), *(m(c) if callable(m) else m for m in more)]


def existing(path: Path) -> Path:
    """``path``, written first: a file that is there already."""
    path.write_bytes(b"an earlier export")
    return path


def predicting(*more, ckpt: str = "last.pth") -> Callable[[Ctx], list]:
    """``predict.py -r <copy>/checkpoints/<ckpt> --out <tmp>/preds.jsonl ...`` unless ``more`` gives --out."""
    return lambda c: [
        "-r",
        c.ckpt(ckpt),
        *([] if "--out" in more else ["--out", c.tmp / "preds.jsonl"]),
        *(m(c) if callable(m) else m for m in more),
    ]


def evil(script: str, key: str) -> Callable[[Ctx], list]:
    extra = (lambda c: ["--out", c.tmp / "preds.jsonl"]) if script == "predict" else (lambda c: [])
    return lambda c: ["-r", c.evil(key), *extra(c)]


def crafted(change: Callable[[dict], None], *more: str) -> Callable[[Ctx], list]:
    return lambda c: ["-r", c.crafted(change), *more]


def file_at(name: str, content: bytes | Callable[[Ctx], bytes], flag: str = "-c") -> Callable[[Ctx], list]:
    def args(c: Ctx) -> list:
        path = c.tmp / name
        path.write_bytes(content(c) if callable(content) else content)
        return [flag, path]

    return args


def folder_at(name: str, flag: str = "-c") -> Callable[[Ctx], list]:
    def args(c: Ctx) -> list:
        (c.tmp / name).mkdir()
        return [flag, c.tmp / name]

    return args


def half_of_last(c: Ctx) -> bytes:
    data = (c.finished / "checkpoints" / "last.pth").read_bytes()
    return data[: len(data) // 2]


class RunsCode:
    """Pickles as a call of ``os.system``: a foreign .pth that would run code if unpickled unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickle_that_runs_code(c: Ctx) -> list:
    path = c.tmp / "model.pth"
    torch.save({"format": "pytorch-template-checkpoint", "version": 2, "model": RunsCode(c.marker)}, path)
    return ["-r", path]


def weights_only_file(c: Ctx) -> Path:
    path = c.tmp / "weights.pth"
    torch.save(torch.load(c.finished / "checkpoints" / "last.pth", weights_only=True)["model"], path)
    return path


def loose_checkpoint(c: Ctx) -> list:
    shutil.copy(c.finished / "checkpoints" / "last.pth", c.tmp / "last.pth")
    return ["-r", c.tmp / "last.pth"]


def in_existing(name: str, as_file: bool | None) -> Callable[[Ctx], list]:
    """A new run with --run-id ``name`` in an existing experiment folder where ``name`` is a file, a
    folder that holds a file, or (``as_file`` None) nothing: another run is there."""

    def args(c: Ctx) -> list:
        folder = c.tmp / "saved" / "tiny"
        folder.mkdir(parents=True)
        if as_file is None:
            (folder / "earlier_run").mkdir()
        elif as_file:
            (folder / name).write_text("not a folder")
        else:
            (folder / name).mkdir()
            (folder / name / "notes.txt").write_text("mine")
        return ["-c", c.config(), "--run-id", name]

    return args


def a_file_as_save_dir(below: str) -> Callable[[Ctx], list]:
    def args(c: Ctx) -> list:
        (c.tmp / "afile").write_text("x")
        return ["-c", c.config(), f"trainer.save_dir={c.tmp / 'afile' / below}"]

    return args


def with_world_size_2(state: dict) -> None:
    state["world_size"], state["ranks"] = 2, [state["ranks"][0], state["ranks"][0]]


def mid_epoch_resume(change: Callable[[dict], None] | None, *overrides: str) -> Callable[[Ctx], list]:
    def args(c: Ctx) -> list:
        path = c.crafted(change, source=c.mid_epoch) if change else c.run(c.mid_epoch) / "checkpoints" / "last.pth"
        return ["-r", path, *overrides, "--trust-checkpoint"]  # its model is a test module (fault_injection)

    return args


# -- inputs built to exhaust, damaged histories and shards (issue "hardening, round 3") -----------------

LONG = "x" * 300  # a file name longer than any file system takes
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)  # nine lines standing for 10**9 values
OVERRIDE_BOMB = "name=[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d], [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]]"


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def shared(levels: int) -> list:
    """A list standing for 2**levels values through shared references (what a pickle's memo keeps).
    A checkpoint holding one is crafted as version 2: signing it (version 3) would expand it."""
    value: list = ["x"]
    for _ in range(levels):
        value = [value, value]
    return value


def config_link(target: str) -> Callable[[Ctx], list]:
    def args(c: Ctx) -> list:
        link = c.tmp / "linked.yaml"
        os.symlink(target, link)
        return ["-c", link]

    return args


def fifo_config(c: Ctx) -> list:
    path = c.tmp / "pipe.yaml"
    os.mkfifo(path)  # reading it would wait for a writer forever
    return ["-c", path]


def damaged_history(name: str, content: bytes | None) -> Callable[[Ctx], list]:
    """A resume of a copy of the finished run whose ``name`` holds ``content`` (None: a folder)."""

    def args(c: Ctx) -> list:
        run = c.run()
        path = run / name
        path.unlink()
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
        return ["-r", run / "checkpoints" / "last.pth", "trainer.epochs=3"]

    return args


DICT_LOADER = 'data_loader={type: "user_bugs:DictDigitsDataLoader"}'
DICT_MODEL = 'arch={type: "user_bugs:ImageKeywordCNN", args: {num_classes: 10}}'
OUTSIDE = "is not defined in this project's source packages"


def chain_of(files: dict[str, str], *overrides: str) -> Callable[[Ctx], list]:
    """``train.py -c <tmp>/v.yaml``: a config extending others; ``files`` by name (``base.json`` is the tiny config)."""

    def args(c: Ctx) -> list:
        c.config(name="base.json")
        for name, text in files.items():
            (c.tmp / name).write_text(text)
        return ["-c", c.tmp / "v.yaml", *overrides]

    return args


DOUBLING = {"k0": "x" * 64, **{f"k{i}": f"${{k{i - 1}}}${{k{i - 1}}}" for i in range(1, 22)}}
"""22 keys, each two of the one before: a 128 MiB string if references were not bounded."""


def x(row: Row) -> Row | pytest.param:
    """A row as a pytest param; a row with ``xfail`` is kept as the right expectation and marked strict."""
    marks = [pytest.mark.xfail(strict=True, reason=row.xfail)] if row.xfail else []
    return pytest.param(row, id=row.id, marks=marks)


ROWS = [
    # -- config files and values: one line before anything exists --------------------------------------
    Row(
        "yaml !!timestamp",
        "train",
        new(name="c.yaml", replace=[("name: tiny", "name: !!timestamp 2024-01-01")]),
        2,
        ("name:", "not plain data"),
    ),
    Row("yaml !!set", "train", new(name="c.yaml", replace=[("seed: 0", "seed: !!set {1, 2}")]), 2, ("seed:", "not plain data")),
    Row(
        "yaml !!binary",
        "train",
        new(name="c.yaml", replace=[("name: tiny", "name: !!binary aGVsbG8=")]),
        2,
        ("name:", "not plain data"),
    ),
    Row(
        "yaml !!python tag runs nothing",
        "train",
        lambda c: [
            "-c",
            c.config(name="c.yaml", replace=[("name: tiny", f"name: !!python/object/apply:os.system ['touch {c.marker}']")]),
        ],
        2,
        ("invalid YAML",),
    ),
    Row(
        "yaml alias that contains itself",
        "train",
        new(name="c.yaml", replace=[("metrics:\n", "metrics: &m\n- *m\n")]),
        2,
        ("metrics",),
    ),
    Row("NaN override", "train", new("trainer.clip_grad_norm=.nan"), 2, ("trainer.clip_grad_norm", "NaN")),
    # -- experiment trackers (logger.*): one line at start, like any other key --------------------------------
    Row("unknown tracker", "train", new("logger.trackers=[tensorboard, mlfow]"), 2, ("logger.trackers", "unknown tracker 'mlfow'", "did you mean 'mlflow'")),
    Row("trackers not a list", "train", new("logger.trackers=mlflow"), 2, ("logger.trackers", "expected list")),
    Row("tracker named twice", "train", new("logger.trackers=[mlflow, mlflow]"), 2, ("logger.trackers", "twice")),
    Row("tracker name not a string", "train", new("logger.trackers=[{mlflow: 1}]"), 2, ("logger.trackers", "tracker names")),
    Row("tracking_uri a number", "train", new("logger.mlflow.tracking_uri=5"), 2, ("logger.mlflow.tracking_uri", "expected str or null")),
    Row("tracking_uri blank", "train", new("logger.mlflow.tracking_uri=' '"), 2, ("logger.mlflow.tracking_uri", "must not be empty")),
    Row("mlflow options a string", "train", new("logger.mlflow=sqlite"), 2, ("logger.mlflow", "expected mapping")),
    Row("mlflow option typo override", "train", new("logger.mlflow.trackinguri=x"), 2, ("logger.mlflow.trackinguri", "did you mean 'logger.mlflow.tracking_uri'")),
    Row("mlflow option typo in the file", "train", new(change=set_key("logger.mlflow.trackinguri", "x")), 2, ("logger.mlflow.trackinguri", "did you mean")),
    Row("logger key typo", "train", new("logger.tracker=[mlflow]"), 2, ("logger.tracker", "did you mean 'logger.trackers'")),
    Row("wandb mode typo", "train", new("logger.wandb.mode=onlin"), 2, ("logger.wandb.mode", "must be one of")),
    Row("wandb project a list", "train", new("logger.wandb.project=[a]"), 2, ("logger.wandb.project", "expected str or null")),
    Row("log_checkpoints not a bool", "train", new("logger.log_checkpoints=sometimes"), 2, ("logger.log_checkpoints", "expected bool")),
    Row("finish_timeout zero", "train", new("logger.finish_timeout=0"), 2, ("logger.finish_timeout", "positive number of seconds")),
    Row("resume with an unknown tracker", "train", resume("logger.trackers=[wandb, mlfow]"), 2, ("logger.trackers", "did you mean 'mlflow'")),
    Row("NaN in a yaml file", "train", new(name="c.yaml", replace=[("lr: 0.002", "lr: .nan")]), 2, ("optimizer.args.lr", "NaN")),
    Row("NaN in a json file", "train", new(replace=[('"seed": 0', '"seed": NaN')]), 2, ("seed", "NaN")),
    Row("infinite clip_grad_norm", "train", new("trainer.clip_grad_norm=.inf"), 2, ("trainer.clip_grad_norm", "finite")),
    Row("empty yaml file", "train", file_at("empty.yaml", b""), 2, ("empty.yaml", "must be a mapping")),
    Row("binary file as config", "train", file_at("c.json", b"\xff\xfe\x00\x81\x00"), 2, ("c.json", "not a text file")),
    Row("folder as -c", "train", folder_at("folder.yaml"), 2, ("folder.yaml", "a folder, not a config file")),
    Row("missing -c", "train", lambda c: ["-c", c.tmp / "nope.yaml"], 2, ("nope.yaml", "not found")),
    Row("neither -c nor -r", "train", lambda c: [], 2, ("-c CONFIG", "-r CHECKPOINT")),
    Row(
        "seed beyond 64 bits",
        "train",
        new("seed=18446744073709551616"),
        2,
        ("seed",),
    ),
    Row(
        "fractional batch_size",
        "train",
        new("data_loader.args.batch_size=1.5"),
        2,
        ("data_loader.args.batch_size",),
    ),
    Row(
        "dropout above 1",
        "train",
        new("arch.args.dropout=2"),
        2,
        ("arch.args.dropout",),
    ),
    Row(
        "negative num_classes",
        "train",
        new("arch.args.num_classes=-1"),
        2,
        ("arch.args.num_classes",),
    ),
    Row(
        "StepLR step_size 0",
        "train",
        new("lr_scheduler.args.step_size=0"),
        2,
        ("lr_scheduler",),
    ),
    Row(
        "Adam betas of one number",
        "train",
        new("optimizer.args.betas=[0.9]"),
        2,
        ("optimizer.args.betas",),
    ),
    Row("model without parameters", "train", new("arch={type: Identity, args: {num_classes: 10}}"), 2, ("arch", "no trainable parameter")),
    Row("monitor a matrix", "train", new("trainer.monitor=max val_confusion", change=with_confusion_matrix), 2, ("trainer.monitor", "matrix")),
    Row(
        "LBFGS needs a closure",
        "train",
        new("optimizer={type: LBFGS, args: {lr: 0.1}}"),
        2,
        ("optimizer",),
        started_training=True,
    ),
    Row(
        "OneCycleLR shorter than the run",
        "train",
        new("lr_scheduler={type: OneCycleLR, args: {max_lr: 0.1, total_steps: 1}, interval: step}"),
        2,
        ("lr_scheduler",),
        started_training=True,
    ),
    # -- the command line and the file system ----------------------------------------------------------
    Row("run-id with a backslash", "train", new("--run-id", "a\\b"), 2, ("--run-id", "not a folder name")),
    Row("run-id with a newline", "train", new("--run-id", "a\nb"), 2, ("--run-id", "not a folder name")),
    Row("run-id with a control character", "train", new("--run-id", "a\x07b"), 2, ("--run-id", "not a folder name")),
    Row("run-id too long, first run", "train", new("--run-id", "r" * 300), 2, ("--run-id", "too long")),
    Row("run-id too long, next run", "train", in_existing("r" * 300, as_file=None), 2, ("--run-id", "too long")),
    Row("name too long", "train", new("name=" + "n" * 300), 2, ("name", "too long")),
    Row(
        "save_dir part too long",
        "train",
        lambda c: ["-c", c.config(), f"trainer.save_dir={c.tmp / ('s' * 300)}"],
        2,
        ("trainer.save_dir", "too long"),
    ),
    Row("-d not GPU indices", "train", new("-d", "gpu0"), 2, ("-d/--device", "not a list of GPU indices")),
    Row("-d with a semicolon", "train", new("-d", "0;1"), 2, ("-d/--device",)),
    Row("unknown device", "train", new("device=tpu"), 2, ("device", "unknown device")),
    Row("cuda without CUDA", "train", new("device=cuda"), 2, ("device", "CUDA is not available")),
    Row("save_dir is a file", "train", a_file_as_save_dir(""), 2, ("trainer.save_dir", "is a file, not a folder")),
    Row("save_dir below a file", "train", a_file_as_save_dir("sub"), 2, ("trainer.save_dir", "is a file, not a folder")),
    Row("run-id names a file", "train", in_existing("taken", as_file=True), 2, ("taken", "is a file")),
    Row("run-id of an existing folder", "train", in_existing("taken", as_file=False), 2, ("--run-id", "already exists")),
    # -- the pre-flight batch: model and data that do not fit ----------------------------------------
    Row("labels beyond num_classes", "train", new("arch.args.num_classes=5"), 2, ("arch.args.num_classes", "class index 9")),
    Row(
        "labels 1..10 for 10 classes",
        "train",
        new('data_loader={type: "user_bugs:ShiftedLabelsDataLoader"}'),
        2,
        ("arch.args.num_classes", "class index 10"),
    ),
    Row(
        "negative labels",
        "train",
        new('data_loader={type: "user_bugs:ShiftedLabelsDataLoader", args: {shift: -1}}'),
        2,
        ("loss:", "out of bounds"),
    ),
    Row(
        "input shape vs model",
        "train",
        new("arch={type: 'fixtures.model:MLP', args: {in_features: 10, num_classes: 10}}"),
        2,
        ("arch: the model cannot take the data's inputs", "mat1 and mat2 shapes cannot be multiplied"),
    ),
    Row("metric returns a float", "train", new("metrics=[user_bugs:float_metric]"), 2, ("metrics: float_metric", "float")),
    Row(
        "metric returns one value per sample",
        "train",
        new("metrics=[user_bugs:per_sample_metric]"),
        2,
        ("metrics: per_sample_metric", "(64,)"),
    ),
    Row(
        "loss not a scalar",
        "train",
        new("loss={type: CrossEntropyLoss, args: {reduction: none}}"),
        2,
        ("loss:", "one floating-point number"),
    ),
    Row(
        "dict output to a metric function",
        "train",
        new("arch.type=user_bugs:DictOutputCNN", "loss=user_bugs:dict_nll_loss", "metrics=[fixtures.metric:accuracy]"),
        2,
        ("metrics: accuracy", "dict"),
    ),
    Row(
        "dict output to a metric object",
        "train",
        new("arch.type=user_bugs:DictOutputCNN", "loss=user_bugs:dict_nll_loss", "metrics=[{type: 'fixtures.metric:Accuracy', name: accuracy}]"),
        2,
        ("metrics: accuracy", "dict"),
    ),
    Row("dict batch without a target key", "train", new(DICT_LOADER, DICT_MODEL), 2, ("batch: a dict batch", "trainer.target_key")),
    Row(
        "dict batch, target_key not there",
        "train",
        new(DICT_LOADER, DICT_MODEL, "trainer.target_key=label"),
        2,
        ("trainer.target_key is 'label'",),
    ),
    Row("class weights of the wrong length", "train", new("loss={type: CrossEntropyLoss, args: {weight: [1, 2]}}"), 2, ("loss:", "weight")),
    Row(
        "torchmetrics with other num_classes",
        "train",
        new('metrics=[{type: "torchmetrics.classification:MulticlassAccuracy", args: {num_classes: 5}}]'),
        2,
        ("metrics: MulticlassAccuracy",),
    ),
    Row("empty data set", "train", new('data_loader={type: "user_bugs:EmptyDataLoader"}', "trainer.monitor=off"), 2, ("data_loader",)),
    # -- resuming: the checkpoint and its fit, checked before the run directory is touched ------------
    Row("-r missing file", "train", lambda c: ["-r", c.tmp / "nope.pth"], 2, ("nope.pth", "not found")),
    Row("-r a folder", "train", lambda c: ["-r", c.run() / "checkpoints"], 2, ("a folder, not a checkpoint",)),
    Row("-r an empty file", "train", file_at("empty.pth", b"", "-r"), 2, ("empty.pth", "not a readable checkpoint")),
    Row("-r a truncated checkpoint", "train", file_at("half.pth", half_of_last, "-r"), 2, ("half.pth", "not a readable checkpoint")),
    Row(
        "-r a foreign .pth",
        "train",
        lambda c: (torch.save({"a": 1}, c.tmp / "foreign.pth"), ["-r", c.tmp / "foreign.pth"])[1],
        2,
        ("not a checkpoint of this template",),
    ),
    Row("-r a pickle that runs code", "train", pickle_that_runs_code, 2, ("model.pth", "not a readable checkpoint")),
    Row("-r a weights file", "train", lambda c: ["-r", weights_only_file(c)], 2, ("a weights file, not a run's checkpoint",)),
    Row("-r outside checkpoints/", "train", loose_checkpoint, 2, ("checkpoints/ folder",)),
    Row(
        "resume Adam run with SGD",
        "train",
        resume("optimizer={type: SGD, args: {lr: 0.1}}", ckpt="epoch-1.pth"),
        2,
        ("optimizer: the checkpoint holds the state of Adam",),
    ),
    Row("resume with another arch", "train", resume("arch={type: 'fixtures.model:MLP'}", ckpt="epoch-1.pth"), 2, ("weights do not match the model",)),
    Row(
        "resume without its scheduler", "train", resume("lr_scheduler=null"), 2, ("lr_scheduler: the checkpoint holds the state of StepLR",)
    ),
    Row("resume with EMA turned on", "train", resume("trainer.ema_decay=0.9"), 2, ("ema:",)),
    Row(
        "resume with other param_groups",
        "train",
        resume("optimizer.param_groups=[{params: fc2, lr: 0.001}]"),
        2,
        ("optimizer:", "parameter groups"),
    ),
    Row("resume with a typo override", "train", resume("trainer.epochz=3"), 2, ("trainer.epochz", "did you mean")),
    Row("checkpoint of a newer version", "train", crafted(lambda s: s.update(version=99)), 2, ("newer than this code",)),
    Row("checkpoint without progress", "train", crafted(lambda s: s.pop("progress")), 2, ("incomplete or damaged checkpoint", "progress")),
    Row(
        "checkpoint with no ranks",
        "train",
        crafted(lambda s: s.update(ranks=[])),
        2,
        ("last.pth",),
    ),
    Row(
        "checkpoint config not a mapping",
        "train",
        crafted(lambda s: s.update(config="abc")),
        2,
        ("last.pth",),
    ),
    Row(
        "mid-epoch with another batch_size",
        "train",
        mid_epoch_resume(None, "data_loader.args.batch_size=32"),
        2,
        ("data_loader.args.batch_size", "mid-epoch"),
        mid=True,
    ),
    Row("mid-epoch from 2 processes", "train", mid_epoch_resume(with_world_size_2), 2, ("written mid-epoch by 2 process(es)",), mid=True),
    Row(
        "fine-tune another model strictly",
        "train",
        lambda c: ["-r", c.ckpt(), "-c", c.config(set_key("arch", {"type": "fixtures.model:MLP", "args": {"num_classes": 10}}))],
        2,
        ("weights do not match the model",),
    ),
    # -- a checkpoint's config is data: naming code outside the project is refused, nothing runs ------
    *[
        Row(f"{script}.py -r, {key} names os:system", script, evil(script, key), 2, (f"{key}", OUTSIDE))
        for script, keys in (
            ("train", ("arch", "loss", "metrics", "optimizer", "data_loader", "lr_scheduler")),
            ("test", ("arch", "loss", "metrics", "optimizer")),
            ("predict", ("arch", "data_loader", "lr_scheduler")),
        )
        for key in keys
    ],
    Row(
        "test.py -r, arch names subprocess:run",
        "test",
        crafted(lambda s: s["config"].update(arch={"type": "subprocess:run", "args": {"args": ["true"]}})),
        2,
        ("arch.type", OUTSIDE),
    ),
    Row(
        "test.py -r, arch names builtins:exec",
        "test",
        crafted(lambda s: s["config"].update(arch={"type": "builtins:exec", "args": {}})),
        2,
        ("arch.type", OUTSIDE),
    ),
    # -- test.py and predict.py ------------------------------------------------------------------------
    Row(
        "test.py weights file without -c",
        "test",
        lambda c: ["-r", weights_only_file(c)],
        2,
        ("a weights file without a config", "-c CONFIG"),
    ),
    Row(
        "predict.py weights file without -c",
        "predict",
        lambda c: ["-r", weights_only_file(c), "--out", c.tmp / "p.jsonl"],
        2,
        ("a weights file without a config",),
    ),
    Row(
        "test.py checkpoint of another model",
        "test",
        evaluate("-c", lambda c: c.config(set_key("arch", {"type": "fixtures.model:MLP", "args": {"num_classes": 10}}))),
        2,
        ("weights do not match the model",),
    ),
    Row("test.py --out a folder", "test", evaluate("--out", lambda c: c.tmp), 2, ("--out", "is a folder")),
    Row(
        "test.py --export a folder",
        "test",
        evaluate("--out", lambda c: c.tmp / "m.json", "--export", lambda c: c.tmp),
        2,
        ("--export", "is a folder"),
    ),
    Row("test.py --weights ema without EMA", "test", evaluate("--weights", "ema"), 2, ("--weights ema", "no EMA weights")),
    Row(
        "test.py --out onto the run's checkpoint",
        "test",
        evaluate("--out", lambda c: c.ckpt("epoch-1.pth")),
        2,
        ("--out",),
    ),
    Row(
        "test.py --export onto the run's checkpoint",
        "test",
        evaluate("--out", lambda c: c.tmp / "m.json", "--export", lambda c: c.ckpt("epoch-1.pth")),
        2,
        ("--export",),
    ),
    Row("test.py -d not GPU indices", "test", evaluate("-d", "first"), 2, ("-d/--device",)),
    Row("test.py folder as -c", "test", evaluate("-c", lambda c: (c.tmp / "cfg").mkdir() or c.tmp / "cfg"), 2, ("cfg",)),
    Row("test.py typo override", "test", evaluate("trainer.epochz=3"), 2, ("trainer.epochz",)),
    Row(
        "test.py checkpoint without progress",
        "test",
        crafted(lambda s: s.pop("progress")),
        2,
        ("last.pth",),
    ),
    Row("predict.py --out a folder", "predict", predicting("--out", lambda c: c.tmp), 2, ("--out",)),
    Row(
        "predict.py --out a folder named .jsonl",
        "predict",
        predicting("--out", lambda c: (c.tmp / "p.jsonl").mkdir() or c.tmp / "p.jsonl"),
        2,
        ("--out", "is a folder"),
    ),
    Row(
        "predict.py --out unknown extension", "predict", predicting("--out", lambda c: c.tmp / "p.txt"), 2, ("--out", "no known extension")
    ),
    Row(
        "predict.py --out exists",
        "predict",
        predicting("--out", lambda c: (c.tmp / "p.csv").write_text("mine\n") and c.tmp / "p.csv"),
        2,
        ("--out", "exists", "--force"),
    ),
    Row(
        "predict.py --out in a missing folder",
        "predict",
        predicting("--out", lambda c: c.tmp / "no" / "p.jsonl"),
        2,
        ("--out", "does not exist"),
    ),
    Row("predict.py --input without a reader", "predict", predicting("--input", lambda c: c.tmp), 2, ("--input", "unlabeled_dataset")),
    Row(
        "predict.py --split val without a split",
        "predict",
        predicting("--split", "val", "data_loader.args.validation_split=0"),
        2,
        ("--split val",),
    ),
    Row(
        "predict.py -r truncated",
        "predict",
        lambda c: [*file_at("half.pth", half_of_last, "-r")(c), "--out", c.tmp / "p.jsonl"],
        2,
        ("not a readable checkpoint",),
    ),
    # -- inputs built to exhaust: bounded before anything walks them -----------------------------------
    Row("yaml billion laughs", "train", file_at("laughs.yaml", LAUGHS.encode()), 2, ("expands to more than 1,000,000 values",)),
    Row("json nested 3000 deep", "train", file_at("deep.json", ('{"name": ' + "[" * 3000 + "]" * 3000 + "}").encode()), 2, ("nested too deeply",)),
    Row("yaml nested 500 deep", "train", file_at("deep.yaml", ("name: " + "[" * 500 + "]" * 500 + "\n").encode()), 2, ("nested",)),
    Row("config linked to /dev/zero", "train", config_link("/dev/zero"), 2, ("not a regular file",)),
    Row("config that is a named pipe", "train", fifo_config, 2, ("not a regular file",)),
    Row("override with aliases to 10**6", "train", new(OVERRIDE_BOMB), 2, ("override", "expands to more than")),
    Row("checkpoint config of shared references", "train", crafted(lambda s: s.update(version=2, config={**s["config"], "name": shared(40)})), 2, ("not a usable checkpoint", "expands")),
    Row("checkpoint config nested 200 deep", "test", crafted(lambda s: s.update(version=2, config={**s["config"], "name": nested(200)})), 2, ("not a usable checkpoint", "nested")),
    # -- names the file system refuses, and objects of the wrong kind -----------------------------------
    Row("-c name too long", "train", lambda c: ["-c", c.tmp / f"{LONG}.json"], 2, ("name is too long",)),
    Row("-r name too long", "train", lambda c: ["-r", c.tmp / f"{LONG}.pth"], 2, ("name is too long",)),
    Row("test.py -r name too long", "test", lambda c: ["-r", c.tmp / f"{LONG}.pth"], 2, ("name is too long",)),
    Row("predict.py --out name too long", "predict", predicting("--out", lambda c: c.tmp / f"{LONG}.jsonl"), 2, ("--out", "name is too long")),
    Row("test.py --export name too long", "test", evaluate("--export", lambda c: c.tmp / f"{LONG}.pt2"), 2, ("--export", "name is too long")),
    Row("test.py --out name too long", "test", evaluate("--out", lambda c: c.tmp / f"{LONG}.json"), 2, ("--out", "name is too long")),
    Row("save_dir of a user that does not exist", "train", new("trainer.save_dir=~nosuchuser_x/runs"), 2, ("trainer.save_dir", "names no user")),
    Row("arch names a function returning a number", "train", new("metrics=[fixtures.metric:accuracy]", "arch={type: 'torch.nn.init:calculate_gain', args: {nonlinearity: relu}}"), 2, ("arch.type", "not a torch.nn.Module")),
    Row("optimizer names a module", "train", new("optimizer={type: 'torch.nn:Identity'}"), 2, ("optimizer.type", "not a torch.optim.Optimizer")),
    Row("data loader names a module", "train", new("data_loader={type: 'torch.nn:Identity'}"), 2, ("data_loader.type", "gives no batches")),
    Row("loss that takes one argument", "train", new("loss={type: 'torch.nn:Identity'}"), 2, ("loss: it cannot take",)),
    # -- silently wrong before: now refused ---------------------------------------------------------------
    Row("metric named loss", "train", new("metrics=[{type: 'fixtures.metric:accuracy', name: loss}]"), 2, ("metrics.0.name", "'loss' would overwrite")),
    Row("metric named val_accuracy", "train", new("metrics=[{type: 'fixtures.metric:accuracy', name: val_accuracy}]"), 2, ("metrics.0.name", "'val_accuracy'")),
    Row("resume with --run-id", "train", resume("--run-id", "other"), 2, ("--run-id", "a resume continues")),
    # -- resuming a damaged run directory: one line, and the directory as it was ----------------------------
    Row("resume: config.json is not JSON", "train", damaged_history("config.json", b"{oops"), 2, ("config.json", "not valid JSON")),
    Row("resume: config.json is a list", "train", damaged_history("config.json", b"[1, 2]"), 2, ("config.json", "holds list, not a mapping")),
    Row("resume: config.json is a folder", "train", damaged_history("config.json", None), 2, ("config.json", "a folder")),
    Row("resume: manifest.json is not JSON", "train", damaged_history("manifest.json", b"\x00\x01"), 2, ("manifest.json",)),
    Row("resume: manifest.json is a list", "train", damaged_history("manifest.json", b"[]"), 2, ("manifest.json", "not a mapping")),
    Row("resume: a row's epoch is a string", "train", damaged_history("metrics.jsonl", b'{"epoch": "1", "loss": 1.0}\n'), 2, ("metrics.jsonl", "epoch '1'")),
    Row("resume: a row is not JSON", "train", damaged_history("metrics.jsonl", b'{"epoch": 1}\nnot json\n{"epoch": 2}\n'), 2, ("metrics.jsonl", "line 2 is not JSON")),
    # -- a damaged shard of the shipped stream loader is a data error naming it ------------------------------
    # -- structured outputs and targets (issue 38): fields and sample counts ----------------------------
    Row("metric output field of a tensor output", "train", new("metrics=[{type: 'fixtures.metric:accuracy', output: cls}]"), 2, ("metrics: accuracy", "output field 'cls'", "Tensor", '"output"')),
    Row("metric target field missing", "train", new("metrics=[{type: 'fixtures.metric:accuracy', target: cls}]"), 2, ("metrics: accuracy", "target field 'cls'", '"target"')),
    Row("metric output field not a name", "train", new("metrics=[{type: 'fixtures.metric:accuracy', output: 3}]"), 2, ("metrics.0.output", "field name")),
    Row(
        "batch tensors disagree on the samples",
        "train",
        new('data_loader={type: "multitask:SequenceFirst"}', "--trust-checkpoint"),
        2,
        ("batch:", "inputs has 2, target.cls has 16", "batch_samples"),
    ),
    # -- bugs in the user's own code: a traceback into the user's line, exit code 1 --------------------
    Row("model __init__ biass=True", "train", new("arch.type=user_bugs:MisspelledArgumentCNN"), 1, bug="biass"),
    Row("model forward NameError", "train", new("arch.type=user_bugs:NameErrorCNN"), 1, bug="temperature"),
    Row("loss AttributeError", "train", new("loss=user_bugs:misspelled_loss"), 1, bug="nll_los"),
    Row("metric ZeroDivisionError", "train", new("metrics=[user_bugs:zero_division_metric]"), 1, bug="division"),
    Row("data loader __init__ TypeError", "train", new('data_loader={type: "user_bugs:MisspelledDigitsDataLoader"}'), 1, bug="trainig"),
    Row("dataset __getitem__ KeyError", "train", new('data_loader={type: "user_bugs:BrokenItemDataLoader"}'), 1, bug="key"),
    Row(
        "test.py model forward NameError",
        "test",
        evaluate("-c", lambda c: c.config(set_key("arch.type", "user_bugs:NameErrorCNN")), "--out", lambda c: c.tmp / "m.json"),
        1,
        bug="temperature",
    ),
    Row(
        "predict.py model forward NameError",
        "predict",
        predicting("-c", lambda c: c.config(set_key("arch.type", "user_bugs:NameErrorCNN"))),
        1,
        bug="temperature",
    ),
    # -- a family of configs (extends, patch, list selectors): one line naming the file, the key and the fix --
    Row("extends: a missing base", "train", chain_of({"v.yaml": "extends: nothere.yaml\n"}), 2, ("v.yaml: extends: 'nothere.yaml' does not exist", "fix the path")),
    Row("extends: a cycle of bases", "train", chain_of({"v.yaml": "extends: w.yaml\n", "w.yaml": "extends: [base.json, v.yaml]\n"}), 2, ("a cycle of bases", "v.yaml -> ", "w.yaml -> ", "remove one")),
    Row("extends: a base that is a list", "train", chain_of({"v.yaml": "extends: list.yaml\n", "list.yaml": "- 1\n- 2\n"}), 2, ("v.yaml: extends:", "list.yaml is not a config")),
    Row("extends: not a path", "train", chain_of({"v.yaml": "extends: {a: 1}\n"}), 2, ("v.yaml: extends: must be a file path or a list of paths",)),
    Row("extends: a mapping over a string", "train", chain_of({"v.yaml": "extends: base.json\nloss: {type: NLLLoss}\n"}), 2, ("v.yaml: loss: a mapping cannot merge into \"fixtures.metric:nll_loss\", set by", "base.json:", '"_replace_": true')),
    Row("extends: _delete_ of a missing key", "train", chain_of({"v.yaml": "extends: base.json\nlr_schedulr: {_delete_: true}\n"}), 2, ("v.yaml: lr_schedulr: _delete_ deletes a key the bases do not have",)),
    Row("patch: an index past the end", "train", chain_of({"v.yaml": "extends: base.json\npatch: {'metrics[9].args.k': 1}\n"}), 2, ("v.yaml: patch: 'metrics[9].args.k'", "metrics[9] is not an index of a list of 2 items", "[+]")),
    Row("patch: no metric of that name", "train", chain_of({"v.yaml": "extends: base.json\npatch: {'metrics[name=acuracy].name': a}\n"}), 2, ("v.yaml: patch:", "no item has name 'acuracy'", "'accuracy'")),
    Row("patch: a delete of a missing key", "train", chain_of({"v.yaml": "extends: base.json\npatch: {'~trainer.epochz': null}\n"}), 2, ("v.yaml: patch:", "trainer.epochz is not in the config, so it cannot be deleted", "'trainer.epochs'")),
    Row("override: no metric of that name", "train", new("metrics[name=f2].args.k=1"), 2, ("override 'metrics[name=f2].args.k=1'", "no item has name 'f2'")),
    Row("override: a delete of a missing key", "train", new("~lr_schedulr"), 2, ("override '~lr_schedulr'", "cannot be deleted", "'lr_scheduler'")),
    Row("override: not a list selector", "train", new("metrics[nam=top_k_acc].args.k=1"), 2, ("[nam=top_k_acc]", "is not a list selector", "[name=...]")),
    Row("override: a selector on a mapping", "train", new("optimizer[0]=1"), 2, ("optimizer", "selects a list item", "is a mapping")),
    # -- issue 34: allowed names that would fetch, references that double, mistakes that were tracebacks ---------
    Row(
        "checkpoint's torchvision builder would fetch weights",
        "test",
        crafted(lambda s: s["config"].update(arch={"type": "torchvision.models:shufflenet_v2_x0_5", "args": {"weights": "IMAGENET1K_V1"}})),
        2,
        ("arch.type", "fetch a file through torch.hub", "may not download"),
    ),
    Row("checkpoint config of doubling references", "test", crafted(lambda s: s["config"].update(DOUBLING)), 2, ("k", "expand to more than 1,000,000")),
    Row("-c config of doubling references", "train", new(change=lambda d: d.update(DOUBLING)), 2, ("k", "expand to more than 1,000,000")),
    Row("seed beyond NumPy's range", "train", new("seed=4294967296"), 2, ("seed", "2**32 - 1", "4294967296")),
    Row("negative seed", "train", new("seed=-1"), 2, ("seed", "2**32 - 1")),
    Row(
        "optimizer without lr",
        "train",
        new("optimizer={type: 'torch.optim:Optimizer', args: {defaults: {}}}"),
        2,
        ("optimizer.type", "no learning rate ('lr')"),
    ),
    *(
        [
            Row(
                "metric whose optional dependency is missing",
                "train",
                new("metrics=[{type: 'torchmetrics.image:MemorizationInformedFrechetInceptionDistance'}]"),
                2,
                ("metrics.0.type", "needs a package that is not installed", "torch-fidelity"),
            )
        ]
        if importlib.util.find_spec("torch_fidelity") is None
        else []
    ),
    # -- exports (issue 40: tests/test_export.py has the rest) ---------------------------------------------
    Row(
        "test.py --export an unknown format",
        "test",
        evaluate("--out", lambda c: c.tmp / "m.json", "--export", lambda c: c.tmp / "m.tflite"),
        2,
        ("--export", "m.tflite", ".pt2", ".onnx"),
    ),
    Row(
        "test.py --export onto an existing file",
        "test",
        evaluate("--out", lambda c: c.tmp / "m.json", "--export", lambda c: existing(c.tmp / "m.onnx")),
        2,
        ("--export", "m.onnx exists", "--force"),
    ),
    Row(
        "test.py --export of data-dependent control flow",
        "test",
        evaluate(
            "-c",
            lambda c: c.config(lambda d: d["arch"].update(type="export_models:BranchyCNN")),
            "--out",
            lambda c: c.tmp / "m.json",
            "--export",
            lambda c: c.tmp / "m.pt2",
        ),
        2,
        ("--export", "BranchyCNN", "data-dependent control flow", "tests/export_models.py:", "torch.cond"),
    ),
    Row("trainer.export of an unknown format", "train", new("trainer.export=[pt2, tflite]"), 2, ("trainer.export", "'tflite'", '"onnx"')),
    # -- --auto-resume and the requeue signal (docs/clusters.md) -------------------------------------------
    Row("auto-resume without a run id", "train", new("--auto-resume"), 2, ("--auto-resume", "no run id", "--run-id NAME")),
    Row("auto-resume of a checkpoint", "train", resume("--auto-resume"), 2, ("--auto-resume", "-c CONFIG", "not -r")),
    Row("requeue signal not a signal", "train", new("--requeue-signal", "SIGFOO"), 2, ("--requeue-signal", "'SIGFOO' is not a signal name")),
]



def linked_out(name: str) -> Callable[[Ctx], list]:
    """A resume of a copy of the finished run whose ``name`` (a file, or ``checkpoints``) was moved
    outside the run and replaced by a symbolic link to it: nothing may be written through the link."""

    def args(c: Ctx) -> list:
        run = c.run()
        outside = c.tmp / "outside" / Path(name).name
        outside.parent.mkdir(exist_ok=True)
        if (run / name).exists():
            shutil.move(run / name, outside)
        else:
            outside.write_text("not the run's\n")
        (run / name).symlink_to(outside, target_is_directory=outside.is_dir())
        return ["-r", run / "checkpoints" / "last.pth", "trainer.epochs=3"]

    return args


ROWS += [
    # -- a run directory's own files are written only inside it (no writes through a link) -------------
    Row("resume: train.log links to a file outside", "train", linked_out("train.log"), 2, ("train.log is a symbolic link", "outside")),
    Row("resume: metrics.jsonl links outside", "train", linked_out("metrics.jsonl"), 2, ("metrics.jsonl is a symbolic link",)),
    Row("resume: checkpoints/ links to a folder outside", "train", linked_out("checkpoints"), 2, ("checkpoints is a symbolic link",)),
    Row("resume: .lock links to a file outside", "train", linked_out(".lock"), 2, (".lock is a symbolic link",)),
    Row("resume: a checkpoint links outside", "train", linked_out("checkpoints/epoch-1.pth"), 2, ("epoch-1.pth is a symbolic link",)),
    Row("resume: manifest.json links outside", "train", linked_out("manifest.json"), 2, ("manifest.json is a symbolic link",)),
    Row(
        "resume: a checkpoint outside a run, beside a link",
        "train",
        lambda c: (shutil.copy(c.ckpt(), c.tmp / "last.pth"), (c.tmp / "link").symlink_to(c.ckpt()), ["-r", c.tmp / "last.pth"])[-1],
        2,
        ("pass the file inside its run's checkpoints/ folder",),
    ),
    Row("test.py: the run's test_metrics.json links outside", "test", lambda c: linked_out("test_metrics.json")(c)[:2], 2, ("test_metrics.json is a symbolic link",)),
    # -- a list-valued flag: no empty name, no name twice -----------------------------------------------
    Row("predict.py --fields ''", "predict", predicting("--fields", ""), 2, ("--fields: '' has an empty name",)),
    Row("predict.py --fields a,,b", "predict", predicting("--fields", "output,,target"), 2, ("--fields: 'output,,target' has an empty name",)),
    Row("predict.py --fields named twice", "predict", predicting("--fields", "output, output"), 2, ("--fields: 'output' given more than once",)),
]


# -- sweeps: every value a space can give is checked before the study exists (issue 34) ----------------

LR = {"optimizer.args.lr": {"low": 0.001, "high": 0.01}}


def swept(space: dict | str, *more: str, name: str = "space.yaml") -> Callable[[Ctx], list]:
    """``sweep.py -c <tiny config> --space <space> ...``; ``space`` as data, or as the file's text."""

    def args(c: Ctx) -> list:
        path = c.tmp / name
        path.write_text(space if isinstance(space, str) else yaml.safe_dump(space, sort_keys=False))
        return ["-c", c.config(), "--space", path, *more]

    return args


ROWS += [
    Row("sweep of 1e11 trials", "sweep", swept({"trials": 100_000_000_000, "params": LR}), 2, ("trials: 100000000000", "at most 10000")),
    Row("sweep of 5000 choices", "sweep", swept({"trials": 2, "params": {"optimizer.args.lr": {"choices": [i / 1e5 + 1e-4 for i in range(5000)]}}}), 2,
        ("params: 5000 values to check", "more than 2000")),
    Row("--trials beyond the bound", "sweep", swept({"trials": 2, "params": LR}, "--trials", "10001"), 2, ("--trials: 10001", "at most 10000")),
    Row("sweep choice outside the trust rule", "sweep", swept({"trials": 2, "params": {"loss": {"choices": ["fixtures.metric:nll_loss", "os.path:join"]}}}), 2,
        ("params.loss = 'os.path:join'", "could not be resumed", "--trust-checkpoint")),
    Row("sweep batch size 0", "sweep", swept({"trials": 2, "params": {"data_loader.args.batch_size": {"choices": [32, 0]}}}), 2,
        ("params.data_loader.args.batch_size = 0", "must be a whole number from 1")),
    Row("sweep dropout range to 5.0", "sweep", swept({"trials": 2, "params": {"arch.args.dropout": {"low": 0.0, "high": 5.0}}}), 2,
        ("params.arch.args.dropout = 5.0", "arch.args.dropout", "between 0 and 1")),
    Row("sweep negative lr", "sweep", swept({"trials": 2, "params": {"optimizer.args.lr": {"low": -0.1, "high": 0.1}}}), 2,
        ("params.optimizer.args.lr = -0.1", "Invalid learning rate")),
    Row("sweep varies save_dir", "sweep", swept({"trials": 2, "params": {"trainer.save_dir": {"choices": ["a", "b"]}}}), 2,
        ("params.trainer.save_dir: a sweep cannot vary trainer.save_dir",)),
    Row("sweep varies name", "sweep", swept({"trials": 2, "params": {"name": {"choices": ["a", "b"]}}}), 2, ("params.name: a sweep cannot vary name",)),
    Row("sweep varies the monitor", "sweep", swept({"trials": 2, "params": {"trainer.monitor": {"choices": ["min val_loss", "max val_accuracy"]}}}), 2,
        ("cannot vary trainer.monitor",)),
    Row("sweep string for a callable", "sweep", swept({"trials": 2, "sampler": {"type": "tpe", "args": {"gamma": "lambda n: n"}}, "params": LR}), 2,
        ("sampler.args.gamma: TPESampler takes a function there",)),
    Row("sweep pruner argument Optuna refuses", "sweep", swept({"trials": 2, "pruner": {"type": "median", "args": {"n_startup_trials": -5}}, "params": LR}), 2,
        ("pruner.args: Optuna's MedianPruner refuses them", "n_startup_trials")),
    Row("sweep sampler argument Optuna refuses", "sweep", swept({"trials": 2, "sampler": {"type": "tpe", "args": {"n_startup_trials": "ten"}}, "params": LR}), 2,
        ("sampler.args: Optuna's TPESampler refuses them",)),
    Row("sweep TPE argument used after its start-up", "sweep", swept({"trials": 2, "sampler": {"type": "tpe", "args": {"n_ei_candidates": 0}}, "params": LR}), 2,
        ("sampler.args: Optuna's TPESampler refuses them", "must be positive")),
    Row("space key given twice", "sweep", swept("trials: 2\nparams:\n  optimizer.args.lr: {low: 0.001, high: 0.01}\n  optimizer.args.lr: {choices: [0.1]}\n"), 2,
        ("space.yaml: key 'optimizer.args.lr' is given twice in one mapping (lines 3 and 4)",)),
    Row("yaml config key given twice", "train", new(name="c.yaml", replace=[("seed: 0\n", "seed: 0\nseed: 1\n")]), 2, ("c.yaml: key 'seed' is given twice",)),
    Row("json config key given twice", "train", new(replace=[('"seed": 0', '"seed": 0, "seed": 1')]), 2, ("config.json: key 'seed' is given twice in one mapping; keep one",)),
]  # fmt: skip


# -- several optimizers (issue 38, trainer/optimizers.py): each bad declaration is one line -----------------


def two_optimizers(*changes: Callable[[dict], None]) -> Callable[[dict], None]:
    """The tiny config training ``tests/two_optimizers.py``'s two-part model with two optimizers, then ``changes``."""
    from two_optimizers import two_part

    def change(data: dict) -> None:
        two_part(data)
        for each in changes:
            each(data)

    return change


TRUST = "--trust-checkpoint"  # the model and Trainer live in tests/
ROWS += [
    Row(
        "a parameter owned by two optimizers",
        "train",
        new(TRUST, change=two_optimizers(set_key("optimizer.head.params", ["head.", "body.1."]))),
        2,
        ("optimizer.head.params", "'body.1.weight'", "owned by optimizer 'body' too"),
    ),
    Row(
        "an optimizer of frozen parameters only",
        "train",
        new(TRUST, "trainer.freeze=[body]", change=two_optimizers()),
        2,
        ("optimizer.body.params", "only frozen parameters (trainer.freeze) start with 'body.'", "unfreeze"),
    ),
    Row(
        "a parameter owned by no optimizer",
        "train",
        new(TRUST, change=two_optimizers(set_key("optimizer.head.params", "head.bias"))),
        2,
        ("optimizer:", "'head.weight'", "owned by no optimizer", "trainer.freeze"),
    ),
    Row(
        "an optimizer's prefix matching nothing",
        "train",
        new(TRUST, change=two_optimizers(set_key("optimizer.head.params", ["head.", "neck."]))),
        2,
        ("optimizer.head.params", "'neck.'", "start with ['body.', 'head.']"),
    ),
    Row(
        "an optimizer without params",
        "train",
        new(TRUST, change=two_optimizers(lambda d: d["optimizer"]["head"].pop("params"))),
        2,
        ("optimizer.head.params", "module-name prefix"),
    ),
    Row(
        "a loss for no optimizer",
        "train",
        new(TRUST, change=two_optimizers(set_key("trainer.args.returns", ["body", "head", "neck"]))),
        2,
        ("training_step", "'neck'", "no optimizer's name", "body, head"),
    ),
    Row(
        "an optimizer without a loss",
        "train",
        new(TRUST, change=two_optimizers(set_key("trainer.args.returns", ["head"]), set_key("optimizer.body.every", 1))),
        2,
        ("training_step", "no loss for optimizer 'body'", "self.stepping"),
    ),
    Row(
        "one loss with several optimizers",
        "train",
        new(TRUST, change=two_optimizers(set_key("trainer.type", "Trainer"), set_key("trainer.args", {}))),
        2,
        ("training_step", "one loss", "several optimizers (body, head)", "{name: loss}"),
    ),
    Row(
        "a schedule naming no optimizer",
        "train",
        new(TRUST, change=two_optimizers(set_key("lr_scheduler.haed", {"type": "StepLR", "args": {"step_size": 1}}))),
        2,
        ("lr_scheduler.haed", "names no optimizer", "'lr_scheduler.head'"),
    ),
    Row(
        "one schedule with several optimizers",
        "train",
        new(TRUST, change=two_optimizers(set_key("lr_scheduler", {"type": "StepLR", "args": {"step_size": 1}}))),
        2,
        ("lr_scheduler:", "several optimizers", "null"),
    ),
    Row(
        "every below 1",
        "train",
        new(TRUST, change=two_optimizers(set_key("optimizer.body.every", 0))),
        2,
        ("optimizer.body.every", ">= 1", "got 0"),
    ),
    Row(
        "resume with several optimizers",
        "train",
        resume("optimizer={a: {type: SGD, args: {lr: 0.1}, params: conv}, b: {type: SGD, args: {lr: 0.1}, params: fc}}", "lr_scheduler=null"),
        2,
        ("training_step", "returned one loss", "several optimizers (a, b)"),  # the pre-flight, before any part is restored
    ),
    Row(
        "a manual step that never steps",
        "train",
        new(
            TRUST,
            change=two_optimizers(set_key("trainer.type", "two_optimizers:ManualTwoTrainer"), set_key("trainer.args", {"step_optimizers": False})),
        ),
        2,
        ("training_step", "manual optimization", "stepped no optimizer in engine step 0", "self.optimizers[name].step()"),
        started_training=True,
    ),
    Row(
        "an optimizer name that is no identifier",
        "train",
        new(TRUST, change=two_optimizers(lambda d: d["optimizer"].update({"the head": d["optimizer"].pop("head")}))),
        2,
        ("optimizer.the head", "Python identifier"),
    ),
]


@pytest.fixture(autouse=True)
def from_the_project_root(monkeypatch):
    """Run as users do (``python train.py`` in the project), with no train.log of an earlier in-process run attached."""
    monkeypatch.chdir(ROOT)
    close_log_files()
    yield
    close_log_files()


def invoke(script: str, argv: list, capsys) -> tuple[int | str, str]:
    """``main(argv)`` of ``script`` in-process: (exit code, stderr); an exception escaping ``main`` is a traceback."""
    capsys.readouterr()
    try:
        code: int | str = MAINS[script]([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    except BaseException as exc:  # noqa: BLE001 - the template re-raises its own bugs: that is the finding
        code = f"uncaught {type(exc).__name__}"
        print("".join(traceback.format_exception(exc))[-3000:], file=sys.stderr)
    return code, capsys.readouterr().err


def check_report(row: Row, code: int | str, err: str) -> None:
    assert code == row.code, f"exit {code}, expected {row.code}; stderr:\n{err[-3000:]}"
    assert "Traceback" not in err if row.code == 2 else "Traceback" in err, err[-3000:]
    lines = err.rstrip("\n").splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"not one error line at the end:\n{err[-3000:]}"
    if row.code == 2:
        for fragment in row.expect:
            assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    else:
        where = bug_at(row.bug)
        assert f"raised in your code at {where}" in errors[0], errors[0]
        assert f'File "{ROOT / where.split(":")[0]}", line {where.split(":")[1]}' in err, err
        assert "fix the value in the config" not in err


@pytest.mark.parametrize("row", [x(row) for row in ROWS])
def test_bad_input(row: Row, tmp_path, finished, request, capsys):
    ctx = Ctx(tmp_path, finished, request.getfixturevalue("mid_epoch") if row.mid else None)
    argv = row.args(ctx)  # writes the row's files
    before = tree(tmp_path)
    code, err = invoke(row.script, argv, capsys)
    check_report(row, code, err)
    after = tree(tmp_path)
    if row.started_training:  # a run directory may stay with its train.log; nothing else may change
        after = {k: v for k, v in after.items() if k in before or not k.startswith("saved")}
    assert after == before, f"left behind or changed: {changes(before, after)}"
    assert not ctx.marker.exists()


def test_the_table_is_large_and_ids_are_unique():
    assert len(ROWS) >= 45 and len({row.id for row in ROWS}) == len(ROWS)


# -- history survives a failed resume, byte for byte, and the run still resumes after it --------------


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer={type: SGD, args: {lr: 0.1}}", "optimizer: the checkpoint holds the state of Adam"),
        ("arch={type: 'fixtures.model:MLP'}", "weights do not match the model"),
    ],
    ids=["Adam run resumed with SGD", "arch changed"],
)
def test_a_failed_resume_keeps_the_history_byte_for_byte(override, expected, tmp_path, finished, capsys):
    ctx = Ctx(tmp_path, finished, None)
    run_dir = ctx.run()
    before = tree(run_dir)
    history = ["metrics.jsonl", "config.json", "train.log", *(p.name for p in run_dir.glob("events.out.tfevents.*"))]
    assert len(history) == 4 and all(name in before for name in history)
    code, err = invoke("train", ["-r", run_dir / "checkpoints" / "epoch-1.pth", override], capsys)
    assert code == 2 and err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert tree(run_dir) == before, changes(before, tree(run_dir))
    code, err = invoke("train", ["-r", run_dir / "checkpoints" / "last.pth", "trainer.epochs=3"], capsys)
    assert code == 0, err  # the lock was given back and nothing was spoiled: the run goes on
    rows = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3]
    assert (run_dir / "metrics.jsonl").read_bytes().startswith((finished / "metrics.jsonl").read_bytes())


def test_a_roll_back_keeps_the_users_links_and_gives_back_modes(tmp_path):
    """What a failed resume puts back: replaced files with their bytes and mode, added files and
    links removed, and the links the run directory already had left alone."""
    from app.history import ResumeGuard
    from utils.files import write_atomic

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (run_dir / "metrics.jsonl").chmod(0o600)
    (tmp_path / "notes.txt").write_text("the user's own notes")
    (run_dir / "notes").symlink_to(tmp_path / "notes.txt")
    before = tree(run_dir)
    guard = ResumeGuard(run_dir, None)
    write_atomic(run_dir / "metrics.jsonl", "rewritten\n", "run directory", "make it writable")  # a new file, the default mode
    (run_dir / "added.json").write_text("{}")
    (run_dir / "added-link").symlink_to(tmp_path / "notes.txt")
    guard.roll_back()
    assert tree(run_dir) == before, changes(before, tree(run_dir))
    assert (run_dir / "metrics.jsonl").stat().st_mode & 0o777 == 0o600


# -- a checkpoint's config may not run code; --trust-checkpoint or -c lifts that --------------------------


@pytest.mark.parametrize("script", ["train", "test", "predict"])
def test_a_checkpoint_naming_os_system_runs_nothing(script, tmp_path, finished, capsys):
    ctx = Ctx(tmp_path, finished, None)
    argv = evil(script, "arch")(ctx)
    before = tree(tmp_path)
    code, err = invoke(script, argv, capsys)
    assert not ctx.marker.exists(), "the checkpoint's os.system ran"
    assert code == 2 and OUTSIDE in err and "--trust-checkpoint" in err and err.count("\n") == 1, err
    assert tree(tmp_path) == before


OUTSIDE_CODE = '''
from pathlib import Path

from fixtures.model import TinyCNN as DigitsCNN


class OutsideCNN(DigitsCNN):
    """A model from outside the project; building it leaves a trace."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.25):
        super().__init__(num_classes, dropout)
        (Path(__file__).parent / "BUILT").touch()
'''


def test_trust_checkpoint_or_c_lifts_the_refusal(tmp_path, finished, capsys, monkeypatch):
    code_dir = tmp_path / "elsewhere"
    code_dir.mkdir()
    (code_dir / "outside_code.py").write_text(OUTSIDE_CODE)
    monkeypatch.syspath_prepend(str(code_dir))
    built = code_dir / "BUILT"
    ctx = Ctx(tmp_path, finished, None)
    checkpoint = ctx.crafted(lambda s: s["config"]["arch"].update(type="outside_code:OutsideCNN"))
    config = write_config(tmp_path, torch.load(checkpoint, weights_only=True)["config"], "outside.json")
    for script, extra in (("train", []), ("test", ["--out", tmp_path / "m.json"]), ("predict", ["--out", tmp_path / "p.jsonl"])):
        code, err = invoke(script, ["-r", checkpoint, *extra], capsys)
        assert code == 2 and "'outside_code:OutsideCNN' is not defined in this project's source packages" in err and not built.exists(), err
    for script, extra in (
        ("test", ["--trust-checkpoint", "--out", tmp_path / "m1.json"]),
        ("test", ["-c", config, "--out", tmp_path / "m2.json"]),
        ("predict", ["--trust-checkpoint", "--out", tmp_path / "p1.jsonl"]),
        ("train", ["--trust-checkpoint", "trainer.epochs=3"]),
    ):
        code, err = invoke(script, ["-r", checkpoint, *extra], capsys)
        assert code == 0 and built.exists(), err
        built.unlink()


# -- things that must simply work ------------------------------------------------------------------------


def test_tensor_arguments_may_be_numbers_or_lists(tmp_path):
    base = tiny_config(tmp_path)
    cases = [
        ({"type": "CrossEntropyLoss", "args": {"weight": [1, 1, 2]}}, torch.randn(4, 3), torch.tensor([0, 1, 2, 1])),
        ({"type": "BCEWithLogitsLoss", "args": {"pos_weight": 2}}, torch.randn(4), torch.tensor([0.0, 1.0, 1.0, 0.0])),
        ({"type": "BCEWithLogitsLoss", "args": {"pos_weight": [2.5]}}, torch.randn(4), torch.tensor([0.0, 1.0, 1.0, 0.0])),
    ]
    for node, output, target in cases:
        loss = build_loss(Config.from_dict({**base, "loss": node}, "config"))
        assert torch.isfinite(loss(output, target)), node


def test_a_dict_batch_trains_with_its_target_key_and_unicode_names_work(tmp_path, capsys):
    path = Ctx(tmp_path, tmp_path, None).config()
    code, err = invoke("train", ["-c", path, DICT_LOADER, DICT_MODEL, "trainer.target_key=digit", "name=数字 ✓", "--run-id", "ü-1", "--trust-checkpoint"], capsys)
    assert code == 0, err
    run_dir = tmp_path / "saved" / "数字 ✓" / "ü-1"
    assert (run_dir / "checkpoints" / "last.pth").is_file() and len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    code, err = invoke(
        "train",
        ["-c", path, "loss={type: CrossEntropyLoss, args: {weight: [1, 1, 1, 1, 1, 1, 1, 1, 1, 2]}}", "--run-id", "weighted"],
        capsys,
    )
    assert code == 0, err


def test_resuming_an_early_stopped_run_with_more_epochs_trains_on(tmp_path, capsys):
    # lr 0: the weights never change, so val_loss ties from epoch 2 on and the run stops after epoch 3
    path = Ctx(tmp_path, tmp_path, None).config(lambda data: data["trainer"].update(epochs=10, early_stop=2))
    assert invoke("train", ["-c", path, "optimizer.args.lr=0", "--run-id", "es"], capsys)[0] == 0
    run_dir = tmp_path / "saved" / "tiny" / "es"
    epochs = lambda: [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert epochs() == [1, 2, 3]
    code, err = invoke("train", ["-r", run_dir / "checkpoints" / "last.pth", "trainer.epochs=10"], capsys)
    assert code == 0, err
    assert epochs() == [1, 2, 3, 4, 5]  # the count restarts (trainer.early_stop_reset null: the run had stopped early)


# -- real processes: permissions, a full disk, the scripts' own exit codes --------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _without_root_file_powers() -> None:
    """In the child, before exec: drop the capabilities that let root write into read-only folders."""
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            os._exit(97)


def read_only_runner() -> Callable[[], None] | None:
    """How to run a child for which mode 0o555 folders are read-only.

    Not root: nothing to do. Root (tests and CI run as root): drop CAP_DAC_OVERRIDE from the
    child's bounding set, so the kernel checks permission bits for it. (Running it as user 65534
    instead needs an interpreter that user can read; this one lives under /root.) Skips when neither works.
    """
    if os.geteuid() != 0:
        return None
    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_without_root_file_powers)
    if probe.returncode != 0:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE (prctl PR_CAPBSET_DROP refused): read-only folders cannot be tested")
    return _without_root_file_powers


def file_size_limit(limit: int) -> Callable[[], None]:
    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_writes


def start(*args, preexec: Callable[[], None] | None = None, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, **TESTS_ENV, **THREADS, **(env or {})}
    return subprocess.Popen(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )


def finish(process: subprocess.Popen, timeout: int = 300) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def make_read_only(root: Path) -> None:
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        folder.chmod(0o555)


def make_writable(root: Path) -> None:
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)


@pytest.fixture(scope="module")
def processes(tmp_path_factory, finished):
    """Every case that needs its own real process, started together (they share 2 cores) and awaited by the tests."""
    tmp = tmp_path_factory.mktemp("processes")
    read_only = read_only_runner()
    ctx = Ctx(tmp, finished, None)
    config = ctx.config()
    cases: dict[str, dict] = {}

    def copy(name: str) -> Path:
        target = tmp / name / "saved" / "tiny" / "run"
        shutil.copytree(finished, target)
        return target

    (tmp / "ro_save_dir").mkdir()
    make_read_only(tmp / "ro_save_dir")
    cases["read-only save_dir"] = {
        "args": ["train.py", "-c", config, f"trainer.save_dir={tmp / 'ro_save_dir'}"],
        "preexec": read_only,
        "watch": tmp / "ro_save_dir",
    }
    for name, script, extra in (
        ("test.py into a read-only run directory", "test.py", []),
        ("predict.py into a read-only run directory", "predict.py", ["--out", "RUN/preds.jsonl"]),
        ("train.py -r into a read-only run directory", "train.py", ["trainer.epochs=3"]),
    ):
        run_dir = copy(name.split()[0].replace(".", "_") + "_ro")
        extra = [e.replace("RUN", str(run_dir)) for e in extra]
        make_read_only(run_dir)
        cases[name] = {"args": [script, "-r", run_dir / "checkpoints" / "last.pth", *extra], "preexec": read_only, "watch": run_dir}
    full = copy("disk_full")
    size = (full / "checkpoints" / "last.pth").stat().st_size
    cases["disk full while writing a checkpoint"] = {
        "args": ["train.py", "-r", full / "checkpoints" / "last.pth", "trainer.epochs=3"],
        "preexec": file_size_limit(size // 2),
        "watch": full,
    }
    checkpoints_ro = copy("checkpoints_ro")
    make_read_only(checkpoints_ro / "checkpoints")
    cases["train.py -r with its checkpoints folder read-only"] = {
        "args": ["train.py", "-r", checkpoints_ro / "checkpoints" / "last.pth", "trainer.epochs=3"],
        "preexec": read_only,
        "watch": checkpoints_ro,
    }
    starting = copy("limit_at_start")
    cases["train.py -r when the first history write hits a size limit"] = {
        "args": ["train.py", "-r", starting / "checkpoints" / "last.pth", "trainer.epochs=3"],
        "preexec": file_size_limit(64),  # the lock's few bytes fit; the resumed config does not
        "watch": starting,
    }
    (tmp / "fsize").mkdir()
    cases["predict.py under a file size limit"] = {
        "args": ["predict.py", "-r", finished / "checkpoints" / "last.pth", "--out", tmp / "fsize" / "p.jsonl"],
        "preexec": file_size_limit(2000),
        "watch": tmp / "fsize",
    }
    (tmp / "ro_export").mkdir()
    make_read_only(tmp / "ro_export")
    cases["test.py --export into a read-only folder"] = {
        "args": ["test.py", "-r", finished / "checkpoints" / "last.pth", "--out", tmp / "m.json", "--export", tmp / "ro_export" / "m.pt2"],
        "preexec": read_only,
        "watch": tmp / "ro_export",
    }
    (tmp / "ro_project").mkdir()
    make_read_only(tmp / "ro_project")
    cases["new_project.py into a read-only folder"] = {
        "args": ["new_project.py", tmp / "ro_project" / "P"],
        "preexec": read_only,
        "watch": tmp / "ro_project",
    }
    timestamp = ctx.config(name="timestamp.yaml", replace=[("name: tiny", "name: !!timestamp 2024-01-01")])
    cases["train.py: a config error"] = {"args": ["train.py", "-c", timestamp], "watch": tmp / "saved"}
    cases["train.py: a bug in the user's model"] = {
        "args": ["train.py", "-c", config, "arch.type=user_bugs:MisspelledArgumentCNN", "--trust-checkpoint"],
        "watch": tmp / "saved",
    }
    for case in cases.values():
        case["before"] = tree(case["watch"]) if case["watch"].exists() else None
        case["process"] = start(*case["args"], preexec=case.get("preexec"))
    yield cases
    for case in cases.values():
        if case["process"].poll() is None:
            case["process"].kill()
        if case["watch"].exists():
            make_writable(case["watch"])


def outcome(case: dict) -> tuple[int, str, dict]:
    code, err = finish(case["process"])
    after = tree(case["watch"]) if case["watch"].exists() else None
    return code, err, changes(case["before"] or {}, after or {})


def one_error_line(err: str) -> bool:
    return err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, expected",
    [
        ("read-only save_dir", "trainer.save_dir: cannot write"),
        ("test.py into a read-only run directory", "--out: cannot write"),
        ("predict.py into a read-only run directory", "--out: cannot write"),
        ("train.py -r into a read-only run directory", "run directory"),
    ],
)
def test_read_only_places_are_one_line_and_stay_as_they_were(processes, name, expected):
    code, err, changed = outcome(processes[name])
    assert code == 2 and one_error_line(err) and expected in err, err[-3000:]
    assert "no permission" in err or "read-only" in err, err
    changed.pop(".lock", None)  # the lock names its holder: the one file a claim writes, and no part of the run's history
    assert not changed, changed


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, expected",
    [
        ("train.py -r with its checkpoints folder read-only", "cannot write in"),
        ("train.py -r when the first history write hits a size limit", "file size limit"),
        ("predict.py under a file size limit", "--out: cannot write"),
        ("test.py --export into a read-only folder", "--export: cannot write"),
        pytest.param("new_project.py into a read-only folder", "cannot write the project", marks=pytest.mark.skipif(not (ROOT / "new_project.py").exists(), reason="new_project.py stays in the template; this project was made from it")),
    ],
)
def test_files_that_cannot_be_written_are_one_line_and_nothing_is_left_or_changed(processes, name, expected):
    code, err, changed = outcome(processes[name])
    assert code == 2 and one_error_line(err) and expected in err, err[-3000:]
    assert not changed, changed  # no history changed, no temporary or half-written file left, the lock as it was


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_says_the_previous_checkpoint_is_intact(processes):
    case = processes["disk full while writing a checkpoint"]
    last = case["watch"] / "checkpoints" / "last.pth"
    code, err, changed = outcome(case)
    assert "checkpoints/last.pth" not in changed, "the previous checkpoint was touched"
    assert not list(last.parent.glob(".*tmp*")), "a temporary file was left behind"
    assert code == 2 and one_error_line(err), err[-3000:]
    assert "last.pth" in err and "the disk is full or a file size limit was reached" in err and "the previous last.pth is intact" in err, err


@pytest.mark.slow
def test_the_scripts_themselves_exit_2_for_a_user_error_and_1_for_a_user_bug(processes):
    code, err, changed = outcome(processes["train.py: a config error"])
    assert code == 2 and one_error_line(err) and "name:" in err and "not plain data" in err, err
    assert not changed
    code, err, changed = outcome(processes["train.py: a bug in the user's model"])
    where = bug_at("biass")
    assert code == 1 and err.startswith("Traceback (most recent call last):\n"), err
    assert f'File "{ROOT / "tests" / "user_bugs.py"}", line {where.split(":")[1]}, in __init__' in err, err
    assert 'File "' + str(ROOT / "train.py") not in err, "the template's frames are shown"  # trimmed to the user's frames
    assert err.rstrip("\n").splitlines()[-1].startswith(f"error: TypeError raised in your code at {where}"), err
    assert "fix the value in the config" not in err and not changed


# -- real processes: the run-directory lock --------------------------------------------------------------


@pytest.mark.slow
def test_two_train_py_with_the_same_run_id_one_trains_the_other_exits_2(tmp_path, capsys):
    """Started together with the same --run-id; while the winner trains, resuming its run is refused too."""
    config = tiny_config(tmp_path, epochs=3, limit_batches=3)
    config["data_loader"] = {"type": "fault_injection:SleepyDigitsDataLoader", "args": {"batch_size": 64, "delay": 0.005}}
    path = write_config(tmp_path, config)
    racers = [start("train.py", "-c", path, "--run-id", "same", "--trust-checkpoint") for _ in range(2)]
    run_dir = tmp_path / "saved" / "tiny" / "same"
    last = run_dir / "checkpoints" / "last.pth"
    deadline = time.monotonic() + 240
    while not last.exists() and time.monotonic() < deadline and all(r.poll() in (None, 2) for r in racers):
        time.sleep(0.05)
    winner = next((r for r in racers if r.poll() is None), None)
    if winner is not None and last.exists():  # the winner is training: resuming its run must wait for it
        code, err = invoke("train", ["-r", last, "trainer.epochs=3", "--trust-checkpoint"], capsys)
        if winner.poll() is None:
            assert (
                code == 2
                and err == f"error: {run_dir}: this run directory is in use by process {winner.pid}; wait for it to end, or stop it first\n"
            ), err
    results = {r.pid: finish(r) for r in racers}
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 2], results
    winner_pid = next(pid for pid, (code, _) in results.items() if code == 0)
    loser_err = next(err for code, err in results.values() if code == 2)
    assert loser_err == f"error: --run-id: {run_dir} is in use by process {winner_pid}; choose another --run-id\n", loser_err
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["same"]  # no staging folder left by the loser
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


# -- real processes: signals during start-up ------------------------------------------------------------


def catching(process: subprocess.Popen, signum: int, timeout: float = 60) -> None:
    """Wait until ``process`` has installed its own handler for ``signum`` (``SigCgt`` in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        status = Path(f"/proc/{process.pid}/status").read_text()
        caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
        if caught >> (signum - 1) & 1:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {process.pid} never caught signal {signum}")


@pytest.mark.slow
def test_signals_during_start_up_leave_nothing_or_a_resumable_run(tmp_path, finished, capsys):
    config = tiny_config(tmp_path, epochs=1, limit_batches=3)
    config["arch"]["type"] = "fault_injection:SignalingDigitsCNN"
    path = write_config(tmp_path, config)

    def launch(name: str, **env: str) -> tuple[subprocess.Popen, Path]:
        return start("train.py", "-c", path, f"trainer.save_dir={tmp_path / name}", "--trust-checkpoint", env=env), tmp_path / name

    cases = {
        "SIGTERM in the pre-flight": (*launch("a", SIGNAL_AT_BATCH="1", SIGNAL_NAME="SIGTERM"), 143),
        "SIGINT in the pre-flight": (*launch("b", SIGNAL_AT_BATCH="1", SIGNAL_NAME="SIGINT"), 130),
        "SIGTERM during the imports": (*launch("c"), 143),
        "SIGINT at the first training batch": (*launch("d", SIGNAL_AT_BATCH="2", SIGNAL_NAME="SIGINT"), 130),
    }
    run_dir = Ctx(tmp_path, finished, None).run()
    evaluation = start("test.py", "-r", run_dir / "checkpoints" / "last.pth")
    before = tree(run_dir)
    for process in (cases["SIGTERM during the imports"][0], evaluation):
        catching(process, signal.SIGTERM)  # the scripts catch signals first thing, then import torch for seconds
        process.send_signal(signal.SIGTERM)
    for name, (process, save_dir, expected) in cases.items():
        code, err = finish(process)
        assert code == expected and "Traceback" not in err, (name, code, err[-2000:])
        if not save_dir.exists():
            assert "nothing was created" in err, (name, err)
            continue
        (resumable,) = save_dir.glob("tiny/*/checkpoints/last.pth")  # else: a run directory one can resume
        code, err = invoke("train", ["-r", resumable, "--trust-checkpoint"], capsys)
        assert code == 0, (name, err)
    code, err = finish(evaluation)
    assert code == 143 and "Traceback" not in err, err
    assert tree(run_dir) == before, changes(before, tree(run_dir))

