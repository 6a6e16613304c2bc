"""Shared test helpers: run the entry scripts for real, in a subprocess or in-process, and read
what a run wrote. Import them with ``from helpers import ...`` (pytest puts ``tests/`` on the path)."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TESTS_ENV = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
"""Environment for runs whose config names test-only classes (``fault_injection:...``, ``fixtures.model:...``)."""
TINY = ROOT / "tests" / "fixtures" / "tiny.json"
"""The engine tests' own experiment (``tests/fixtures``): never the project's ``config.json``."""
EXPERIMENT = "tiny"
"""``TINY``'s name: its runs land in ``<save_dir>/tiny/<run id>``."""
TIMING_KEYS = {"samples_per_sec", "data_wait"}
"""Row values that measure time: equal runs differ in them."""
IN_TEMPLATE = (ROOT / "new_project.py").exists()
"""This checkout is the template itself (a project made from it has no ``new_project.py``)."""
USER_CODE = ("model", "data_loader")
"""The project's own code: the shipped examples in the template, the user's experiment after the copy."""
OF_THE_PROJECT = frozenset({"test_experiments.py", "test_new_project.py"})
"""Modules of ``tests/`` outside ``tests/examples`` that test the project's own experiments by design;
the rest of ``tests/*.py`` are the engine's tests, which never use :data:`USER_CODE`."""


def example_or_skip(example: str, *parts: str) -> None:
    """Skip the calling example test module when this project no longer has the example.

    In a project made from the template, the user replaces the shipped examples with their own code
    (``model/model.py``'s ``DigitsCNN`` gives way to their model): the example's tests then skip with
    the reason named, so making the project yours needs no test edit. ``parts`` are what the example
    is made of: ``"package:Name"`` (a name the package exports) or a file's path from the project root.
    In the template itself nothing skips: a missing part fails the imports that follow, as it must.
    """
    if IN_TEMPLATE:
        return
    missing = [part for part in parts if not _has_part(part)]
    if missing:
        caller = Path(inspect.currentframe().f_back.f_code.co_filename).resolve().relative_to(ROOT)
        pytest.skip(
            f"{caller}: the {example} example needs {', '.join(missing)}, which this project no longer has; delete the file with the example",
            allow_module_level=True,
        )


def _has_part(part: str) -> bool:
    if ":" not in part:
        return (ROOT / part).exists()
    package, name = part.split(":")
    try:
        return hasattr(importlib.import_module(package), name)
    except ImportError:
        return False


def run_script(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the project root; returns the completed process (output captured)."""
    # One thread per process: the models are tiny and parallel test processes share 2 cores. tests/
    # is on the path, so a run of the engine tests' fixtures (``fixtures.model:...``) imports them.
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


_MAINS: dict = {}


def script_main(script: str):
    """The ``main`` of ``script`` (``train.py``, ``test.py`` ...), loaded once per process."""
    if script not in _MAINS:
        _MAINS[script] = entry_point(script) if script in ("test.py", "predict.py") else importlib.import_module(script[:-3]).main
    return _MAINS[script]


def run_quiet(script: str, *args) -> int:
    """``script``'s ``main`` (``"train"``, ``"test"``, ``"predict"``) in-process, its standard output
    swallowed and its standard error left to the test (capsys); the exit code."""
    import contextlib

    from logger.logger import close_log_files

    with contextlib.redirect_stdout(None):
        try:
            return script_main(f"{script}.py")([str(arg) for arg in args])
        finally:
            close_log_files()


def run_here(script: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python <script> <args>`` run in this process (``main(argv)``): what :func:`run_script`
    returns, for tests that check what a script does, not what a process does (signals, kills,
    torchrun, limits): a new process costs 3-5 s of imports on the test machine's 2 cores."""
    import contextlib
    import io

    from logger.logger import close_log_files

    main = script_main(script)
    argv = [str(arg) for arg in args]
    before = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        close_log_files()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())


def tiny_config(tmp_path: Path, full_metrics: bool = False, **trainer) -> dict:
    """The engine tests' experiment (``tests/fixtures/tiny.json``: digits, a small CNN), shrunk to
    run in seconds, writing under ``tmp_path``; nothing in it depends on the project's config.json,
    model/ or data_loader/.

    Its metrics are the fixtures' own (accuracy, top-k) unless ``full_metrics``: importing
    torchmetrics costs every process 2 s (it imports torchvision and scipy), and the tests of
    torchmetrics metrics (state across resume, DDP sync, test.py) ask for them."""
    config = json.loads(TINY.read_text())
    if not full_metrics:
        config["metrics"] = [metric for metric in config["metrics"] if "torchmetrics" not in str(metric.get("type"))]
    config["trainer"].update({"epochs": 2, "save_dir": str(tmp_path / "saved"), "tensorboard": False, "early_stop": 0}, **trainer)
    config["data_loader"]["args"]["batch_size"] = 64
    return config


def write_config(tmp_path: Path, config: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def build_trainer(tmp_path: Path, config: dict, *overrides: str, run_id: str = "run"):
    """(trainer, run_dir) prepared in-process exactly as ``train.py`` prepares them, ready to ``train()``."""
    import train

    path = write_config(tmp_path, config, f"{run_id}.json")
    argv = ["-c", str(path), "--run-id", run_id, *overrides, *trusting(config)]
    session = train.Session(train.request_of(train.parse_args(argv), argv), train.STOP)
    run_dir = session.prepare()
    return session.trainer, run_dir


TEST_MODULES = ("user_bugs:", "user_steps:", "fault_injection:", "stream_recorder:", "benchmarks.", "fixtures.")
"""Test modules stand in for a user's code but live in tests/, outside the project's source packages."""


def trusting(config: dict | str) -> list[str]:
    """``--trust-checkpoint`` for a config naming test modules: its run says it trusts its own checkpoints."""
    text = config if isinstance(config, str) else json.dumps(config)
    return ["--trust-checkpoint"] if any(module in text for module in TEST_MODULES) else []


def metric_rows(run_dir: Path, timing: bool = True) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows if timing else [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def last_checkpoint(run_dir: Path, name: str = "last.pth") -> dict:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True, map_location="cpu")


def entry_point(script: str):
    """The ``main`` of an entry script loaded by path (``test`` is also a stdlib package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"{script[:-3]}_entry", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main


class WritesMarker:
    """Pickles as a call of ``exec`` that writes the marker: what a planted cache file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def plant(folder: Path, name: str, marker: Path) -> Path:
    """A real pickle named ``name`` in ``folder`` that writes ``marker`` if it is ever unpickled."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"conv1.0.weight": WritesMarker(marker)}, folder / name)
    return folder / name


def save_crafted(state: dict, path: Path) -> None:
    """Save a checkpoint edited as a stranger would craft one: its checksums made to match again
    (they catch damage, not forgery; what a crafted checkpoint may do is the trust rule's job)."""
    from utils.checkpoints.files import with_checksums

    state = {key: value for key, value in state.items() if key != "checksums"}
    torch.save(with_checksums(state) if state.get("version", 0) >= 3 else state, path)


def seeded_random(request) -> random.Random:
    """A ``random.Random`` for a test that picks random moments; its seed is printed, so a failure
    can be replayed with ``TEST_SEED=<seed>``."""
    seed = int(os.environ.get("TEST_SEED", random.randrange(2**32)))
    print(f"{request.node.name}: TEST_SEED={seed}")
    return random.Random(seed)


def kill_tree(pid: int, signum: int) -> None:
    """Signal a process and all its descendants at once (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    for member in tree:
        try:
            os.kill(member, signum)
        except ProcessLookupError:
            pass


def set_key(path: str, value):
    """A config change for tables of cases: set ``a.b.c`` (missing mappings made on the way)."""

    def change(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return change


def write_images(folder, count: int, colour: tuple[int, int, int], seed: int) -> None:
    """``count`` noisy 32x32 PNGs around one colour: two colours make two learnable classes."""
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        noise = torch.randint(-40, 41, (32, 32, 3), generator=generator)
        pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{index}.png")


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (hidden ones too): folders, links, and files by size and hash."""
    found: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = ("dir",)
            elif not path.is_file():  # a named pipe: reading it would wait for a writer
                found[key] = ("special", path.stat().st_mode)
            else:
                data = path.read_bytes()
                found[key] = (len(data), hashlib.sha256(data).hexdigest())
    return found


def changes(before: dict, after: dict) -> dict[str, str]:
    """What differs between two ``tree`` snapshots, for assertion messages."""
    found = {}
    for key in sorted(set(before) | set(after)):
        if key not in before:
            found[key] = "added"
        elif key not in after:
            found[key] = "removed"
        elif before[key] != after[key]:
            found[key] = "changed"
    return found


BASE_LOADER_ARGUMENTS = {
    "batch_size", "shuffle", "validation_split", "num_workers", "training", "split_seed",
    "in_memory", "drop_last", "folds", "fold", "fold_groups",
}  # fmt: skip
"""``BaseDataLoader``'s arguments that a loader passing ``**kwargs`` on must still accept by name."""


def check_passes_base_arguments_on(loader: type) -> None:
    """A shipped loader names only its own arguments and passes ``**kwargs`` on: every
    ``BaseDataLoader`` argument is still one of its parameters (``validation_split`` and
    ``fold_groups`` may be refused by a loader that sets them itself)."""
    from app.config.overrides import parameters

    assert BASE_LOADER_ARGUMENTS - {"validation_split", "fold_groups"} <= parameters(loader), loader.__name__


def batches(loader, count: int = 3) -> list[torch.Tensor]:
    """The targets of a loader's first ``count`` batches, drawn from ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    return [target for _, target in zip(range(count), (target for _, target in loader))]
