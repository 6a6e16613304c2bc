"""new_project.py: a new project is a clean copy of the template, green and trainable from the start.

A project made from the template has no new_project.py, so this whole module skips there; its
end-to-end tests are marked slow, so the nested suite run below (``-m "not slow"``) cannot recurse.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, run_here, run_script

from utils.errors import EXIT_USER_ERROR, UserError

if not (ROOT / "new_project.py").exists():
    pytest.skip("new_project.py stays in the template; this project was made from it", allow_module_level=True)

new_project = importlib.import_module("new_project")

CACHE_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache"}
CODE_FOLDERS = ("base", "trainer", "model", "data_loader", "utils", "logger", "tests", "configs", "benchmarks", ".ci")


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder`` (symlinks not followed): bytes, link or mode, to prove nothing changed."""
    entries: dict[str, object] = {}
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(parent, name)
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path))
            else:
                entries[rel] = (path.read_bytes() if path.is_file() else None, path.stat().st_mode)
    return entries


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def is_cache(rel: str) -> bool:
    parts = rel.split("/")
    return any(part in CACHE_NAMES or part.endswith(".egg-info") for part in parts) or rel.endswith(".pyc")


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def synthetic_template(tmp_path: Path) -> Path:
    """A small template tree holding every kind of path the copy rules must tell apart."""
    template = tmp_path / "template"
    write_tree(
        template,
        {
            "train.py": "print('train')\n",
            "pyproject.toml": (ROOT / "pyproject.toml").read_text(),
            "README.md": "the template's own README\n",
            "new_project.py": "# the generator itself\n",
            ".gitignore": "/data/\n",
            ".ci/run": "#!/bin/sh\nmake test\n",
            "data_loader/data/corpus.txt": "text data shipped with the template\n",
            "model/saved/notes.txt": "only the root saved/ holds runs\n",
            "tests/data/fixture.json": "{}\n",
            "data/MNIST/raw/train-images": "downloaded\n",
            "saved/.gitkeep": "",
            "saved/exp/0101_000000/checkpoints/last.pth": "a run\n",
            ".git/HEAD": "ref: refs/heads/main\n",
            ".venv/bin/python": "env\n",
            "model/__pycache__/model.cpython-312.pyc": "cache\n",
            "model/stale.pyc": "cache\n",
            ".pytest_cache/v/cache": "cache\n",
            "tests/.ruff_cache/content": "cache\n",
            "template.egg-info/PKG-INFO": "build\n",
            "outside/shared.py": "X = 1\n",
        },
    )
    (template / ".ci" / "run").chmod(0o755)
    outside = tmp_path / "outside"
    write_tree(outside, {"lib.py": "Y = 2\n"})
    (template / "configs").mkdir()
    (template / "configs" / "linked.py").symlink_to(template / "outside" / "shared.py")
    (template / "vendored").symlink_to(outside, target_is_directory=True)
    (template / "data_loader" / "loop").symlink_to(template, target_is_directory=True)
    (template / "dangling.txt").symlink_to(tmp_path / "missing")
    return template


def test_copy_rules_are_anchored_at_the_template_root_and_caches_match_anywhere(tmp_path):
    template = synthetic_template(tmp_path)
    target = tmp_path / "new" / "Demo"

    new_project.create_project(template, target, "Demo")

    assert files_under(target) == {
        "train.py",
        "pyproject.toml",
        "README.md",
        "TEMPLATE.md",
        ".gitignore",
        ".ci/run",
        "data_loader/data/corpus.txt",
        "model/saved/notes.txt",
        "tests/data/fixture.json",
        "saved/.gitkeep",
        "outside/shared.py",
        "configs/linked.py",
        "vendored/lib.py",
    }
    assert os.access(target / ".ci" / "run", os.X_OK)
    assert not any(p.is_symlink() for p in target.rglob("*")), "symlinks must become plain files"
    assert (target / "configs" / "linked.py").read_text() == "X = 1\n"
    assert (target / "vendored" / "lib.py").read_text() == "Y = 2\n"
    assert (target / "saved" / ".gitkeep").read_bytes() == b""
    assert (target / "README.md").read_text().startswith("# Demo\n")
    assert (target / "TEMPLATE.md").read_text() == "the template's own README\n"  # the manual travels along
    old, new = (template / "pyproject.toml").read_text().splitlines(), (target / "pyproject.toml").read_text().splitlines()
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    assert changed == [('name = "pytorch-template"', 'name = "Demo"')]


def test_refuses_a_non_empty_folder_and_touches_nothing(tmp_path):
    target = tmp_path / "Mine"
    write_tree(target, {"notes.txt": "my notes\n", "model/model.py": "# my model\n"})
    before = snapshot(target)

    result = run_here("new_project.py", str(target))

    assert result.returncode == EXIT_USER_ERROR, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(target) in lines[0] and "--force" in lines[0]
    assert snapshot(target) == before


def test_force_adds_template_files_and_keeps_the_users(tmp_path):
    target = tmp_path / "Mine"
    write_tree(target, {"notes.txt": "my notes\n", "model/my_model.py": "# mine\n", "config.json": "{}", "saved/exp/run/train.log": "x\n"})
    mine = {rel: (target / rel).read_bytes() for rel in ("notes.txt", "model/my_model.py", "saved/exp/run/train.log")}

    result = run_here("new_project.py", str(target), "--force", "--name", "mine")

    assert result.returncode == 0, result.stderr
    assert all((target / rel).read_bytes() == data for rel, data in mine.items())
    assert (target / "config.json").read_bytes() == (ROOT / "config.json").read_bytes()
    assert (target / "train.py").read_bytes() == (ROOT / "train.py").read_bytes()
    assert 'name = "mine"' in (target / "pyproject.toml").read_text()


def test_force_refuses_a_folder_where_the_template_has_a_file(tmp_path):
    template = synthetic_template(tmp_path)
    target = tmp_path / "Mine"
    write_tree(target, {"train.py/mine.txt": "a folder in the way\n"})
    before = snapshot(target)

    with pytest.raises(UserError, match=re.escape(str(target / "train.py"))):
        new_project.create_project(template, target, "Mine", force=True)
    assert snapshot(target) == before


@pytest.mark.parametrize("where", ["inside", "itself", "parent"])
def test_refuses_a_target_inside_or_around_the_template(tmp_path, where):
    template = synthetic_template(tmp_path)
    target = {"inside": template / "sub" / "Proj", "itself": template, "parent": tmp_path}[where]
    before = snapshot(tmp_path)

    with pytest.raises(UserError, match="template"):
        new_project.create_project(template, target, "Proj", force=True)
    assert snapshot(tmp_path) == before


def test_project_names(tmp_path, capsys):
    assert new_project.project_name(None, tmp_path / "My Project!") == "My-Project"
    assert new_project.project_name("my_exp.v2", tmp_path / "x") == "my_exp.v2"
    assert new_project.main([str(tmp_path / "x"), "--name", "my exp"]) == EXIT_USER_ERROR
    assert capsys.readouterr().err.startswith("error: --name: 'my exp'")
    assert new_project.main([str(tmp_path / "x"), "--name", "a" * 300]) == EXIT_USER_ERROR  # valid characters, but no name
    err = capsys.readouterr().err
    assert err.startswith("error: --name: 300 characters is too long") and err.count("\n") == 1
    assert new_project.project_name("a" * new_project.MAX_NAME, tmp_path / "x") == "a" * new_project.MAX_NAME
    assert not (tmp_path / "x").exists()


def test_only_the_project_table_name_changes():
    text = '[tool.other]\nname = "keep"\n\n[project]\nversion = "1"\nname = \'old\'\n\n[tool.x]\nname = "keep too"\n'
    assert new_project.set_project_name(text, "new") == text.replace("name = 'old'", 'name = "new"')
    with pytest.raises(UserError, match=r"\[project\]"):
        new_project.set_project_name('[tool.x]\nname = "x"\n', "new")


def test_help_says_force_never_deletes(capsys):
    with pytest.raises(SystemExit):
        new_project.parse_args(["--help"])
    assert "never delete" in " ".join(capsys.readouterr().out.split())


@pytest.mark.slow
def test_new_project_is_clean_green_and_trains(tmp_path):
    target = tmp_path / "MyProject"
    made = run_here("new_project.py", str(target))
    assert made.returncode == 0, made.stderr

    copied = files_under(target)
    # Left out: this checkout's history, environment, runs, downloads, caches and the generator.
    for absent in (".git", ".venv", "data", "new_project.py"):
        assert not (target / absent).exists(), absent
    assert not [rel for rel in copied if is_cache(rel)]
    assert [rel for rel in copied if rel.startswith("saved/")] == ["saved/.gitkeep"]
    assert not any(p.is_symlink() for p in target.rglob("*"))
    # Copied byte for byte: every file of the code folders, the entry scripts, configs and tooling.
    expected = {
        p.relative_to(ROOT).as_posix()
        for folder in CODE_FOLDERS
        if (ROOT / folder).is_dir()
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and not is_cache(p.relative_to(ROOT).as_posix())
    } | {"train.py", "test.py", "config.json", "Makefile", ".gitignore"}
    assert not expected - copied
    assert all((target / rel).read_bytes() == (ROOT / rel).read_bytes() for rel in expected)
    assert os.access(target / ".ci" / "run", os.X_OK)
    # Its own pyproject and README.
    assert re.search(r'^\[project\]\nname = "MyProject"$', (target / "pyproject.toml").read_text(), re.MULTILINE)
    readme = (target / "README.md").read_text()
    assert readme.startswith("# MyProject\n") and "make train" in readme and "make test" in readme and "saved/<name>/<run_id>/" in readme
    named = set(re.findall(r"`((?:\w+/)+\w+\.py)`", readme)) | {"config.json"}  # the files it tells a user to edit
    assert {"data_loader/data_loaders.py", "data_loader/__init__.py", "model/model.py", "model/__init__.py"} <= named
    assert all((target / rel).is_file() for rel in named), named

    # A few of its own tests pass in the current environment (the layers, every shipped config, the
    # manual's snippets, this module, which skips there): the copy stands alone. The template's suite
    # runs them here already; a copy differs only in what new_project.py writes or leaves out.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"} | {"PYTHONPATH": str(target)}
    chosen = ["tests/test_structure.py", "tests/examples/test_manual.py", "tests/test_new_project.py", "tests/test_config.py::test_every_shipped_config_loads_validates_and_builds"]
    nested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'nested'}", *chosen],
        cwd=target,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert nested.returncode == 0, nested.stdout[-3000:] + nested.stderr[-2000:]
    assert "new_project.py stays in the template" in nested.stdout and " passed" in nested.stdout

    # And it trains.
    runs = tmp_path / "runs"
    trained = run_script(
        "train.py", "-c", "config.json", "trainer.epochs=1", "trainer.limit_batches=3", f"trainer.save_dir={runs}", "--run-id", "first",
        cwd=target, env={"PYTHONPATH": str(target)},
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    name = json.loads((target / "config.json").read_text())["name"]
    run_dir = runs / name / "first"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run_dir / "checkpoints" / "last.pth").is_file()


NEW_MODEL = '''\
"""A model the template has never seen."""

import torch.nn.functional as F
from torch import nn

from base import BaseModel


class TinyNet(BaseModel):
    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.layer = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return F.log_softmax(self.layer(x), dim=1)
'''

NEW_LOADER = '''\
"""A data loader the template has never seen: random features and labels."""

import torch
from torch.utils.data import TensorDataset

from base import BaseDataLoader


class RandomDataLoader(BaseDataLoader):
    def __init__(self, samples: int, features: int, classes: int, batch_size: int, validation_split: float = 0.0, training: bool = True):
        generator = torch.Generator().manual_seed(0 if training else 1)
        data = TensorDataset(torch.randn(samples, features, generator=generator), torch.randint(classes, (samples,), generator=generator))
        super().__init__(data, batch_size, shuffle=True, validation_split=validation_split, training=training)
'''


@pytest.mark.slow
def test_a_new_model_and_data_loader_need_no_change_in_trainer_or_base(tmp_path):
    target = tmp_path / "Ext"
    new_project.create_project(ROOT, target, "Ext")
    (target / "model" / "tiny_net.py").write_text(NEW_MODEL)
    with (target / "model" / "__init__.py").open("a") as f:
        f.write('\nfrom model.tiny_net import TinyNet  # noqa: E402\n\n__all__ = [*__all__, "TinyNet"]\n')
    (target / "data_loader" / "random_data.py").write_text(NEW_LOADER)
    with (target / "data_loader" / "__init__.py").open("a") as f:
        f.write('\nfrom data_loader.random_data import RandomDataLoader  # noqa: E402\n\n__all__ = [*__all__, "RandomDataLoader"]\n')
    config = {
        "name": "tiny",
        "arch": {"type": "TinyNet", "args": {"in_features": 6, "num_classes": 3}},
        "data_loader": {
            "type": "RandomDataLoader",
            "args": {"samples": 64, "features": 6, "classes": 3, "batch_size": 16, "validation_split": 0.25},
        },
        "loss": "nll_loss",
        "metrics": ["accuracy"],
        "optimizer": {"type": "SGD", "args": {"lr": 0.1}},
        "trainer": {"epochs": 1, "save_dir": str(tmp_path / "runs"), "monitor": "max val_accuracy", "tensorboard": False},
    }
    (target / "tiny.json").write_text(json.dumps(config))

    trained = run_script("train.py", "-c", "tiny.json", "--run-id", "one", cwd=target, env={"PYTHONPATH": str(target)})

    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "TinyNet" in trained.stdout + trained.stderr
    rows = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "one" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "val_accuracy" in rows[0]
    for folder in ("trainer", "base"):
        ours = {rel for rel in files_under(target / folder) if not is_cache(rel)}
        theirs = {rel for rel in files_under(ROOT / folder) if not is_cache(rel)}
        assert ours == theirs, folder
        assert all((target / folder / rel).read_bytes() == (ROOT / folder / rel).read_bytes() for rel in ours), folder
