"""new_project.py: a new project is a clean copy of the template, green and trainable from the start.

A project made from the template has no new_project.py, so this whole module skips there; its
end-to-end tests are marked slow, so the nested suite run below (``-m "not slow"``) cannot recurse.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml
from helpers import ROOT, run_here, run_script

from utils.errors import EXIT_USER_ERROR, UserError

if not (ROOT / "new_project.py").exists():
    pytest.skip("new_project.py stays in the template; this project was made from it", allow_module_level=True)

new_project = importlib.import_module("new_project")

CACHE_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache"}
GIT = ("git", "-c", "user.name=test", "-c", "user.email=test@localhost")

EXAMPLE_FILES = {
    "mnist": {"configs/mnist.json", "tests/examples/test_mnist.py"},
    "text": {"model/text.py", "data_loader/text.py", "configs/text.json", "tests/examples/test_text.py"},
    "transfer": {"model/transfer.py", "data_loader/image_folder.py", "configs/transfer.json", "tests/examples/test_transfer.py", "tests/examples/test_image_folder.py", "tests/examples/test_transfer_trust.py"},
    "streams": {"data_loader/digit_shards.py", "configs/digits_stream.json", "tests/examples/test_streams.py", "tests/stream_recorder.py", "benchmarks/stream_throughput.py"},
    "vae": {"model/vae.py", "configs/vae.json", "tests/examples/test_vae.py"},
    "diabetes": {"data_loader/diabetes.py", "configs/diabetes.json", "tests/examples/test_diabetes.py"},
    "gan": {"model/gan.py", "configs/gan.json", "tests/examples/test_gan.py"},
    "distill": {"model/distill.py", "configs/distill.json", "tests/examples/test_distill.py"},
}  # fmt: skip
"""What each example besides digits brings (written out here, apart from copier.yml's list, to check it)."""

TEMPLATE_ONLY = {"copier.yml", "new_project.py"}
"""Files of the template that no copy has (besides the ``.jinja`` ones and the plain files they stand for)."""


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
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and ".git" not in p.relative_to(folder).parts
    }


def is_cache(rel: str) -> bool:
    parts = rel.split("/")
    return any(part in CACHE_NAMES or part.endswith(".egg-info") for part in parts) or rel.endswith(".pyc")


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def git(folder: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout


def commit_all(folder: Path, message: str) -> None:
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "--no-verify", "-m", message)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """This checkout as a template of one commit: the files git tracks or would track, as they are on
    disk now (uncommitted work included), so the tests see what the next commit would copy."""
    folder = tmp_path_factory.mktemp("template") / "pytorch-template"
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"], check=True, capture_output=True
    )
    for rel in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / rel).is_file():  # a tracked file deleted on disk is not in the next commit
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, folder / rel)
    git(folder, "init", "-q")
    commit_all(folder, "the template")
    return folder


def later_template(template: Path, folder: Path) -> Path:
    """A clone of ``template`` of its own, for a test that adds commits to it."""
    subprocess.run(["git", "clone", "-q", str(template), str(folder)], check=True)
    return folder


def thin_template(template: Path, folder: Path) -> Path:
    """A template repository of ``template``'s copier.yml, its .jinja files and the files they render
    or an update test touches: Copier's update renders the template three times, and the rest of
    the engine's 200 files would only add seconds (the copies above hold every file)."""
    keep = ("copier.yml", "README.md", "pyproject.toml", "config.json", "model/", "data_loader/", "base/__init__.py", "trainer/__init__.py")
    for rel in git(template, "ls-files").splitlines():
        if rel.endswith(".jinja") or rel.startswith(keep):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(template / rel, folder / rel)
    git(folder, "init", "-q")
    commit_all(folder, "the template, thin")
    return folder


@pytest.fixture(scope="module")
def fresh(template, tmp_path_factory) -> Path:
    """A copy with the defaults (digits only), as ``new_project.py DIR`` makes it."""
    target = tmp_path_factory.mktemp("fresh") / "Fresh"
    new_project.create_project(template, target, "Fresh")
    return target


def test_a_copy_records_the_template_and_commit_and_starts_as_one_clean_commit(template, fresh):
    answers = yaml.safe_load((fresh / ".copier-answers.yml").read_text())
    head = git(template, "rev-parse", "HEAD").strip()
    assert Path(answers["_src_path"]) == template and head.startswith(answers["_commit"]) and len(answers["_commit"]) >= 7
    assert answers["project_name"] == "Fresh" and answers["examples"] == []
    assert len(git(fresh, "log", "--format=%H").splitlines()) == 1
    assert git(fresh, "status", "--porcelain") == ""
    assert answers["_commit"] in git(fresh, "log", "--format=%s")


def test_examples_not_kept_are_absent_and_their_names_unexported(template, fresh):
    copied = files_under(fresh)
    left_out = set().union(*EXAMPLE_FILES.values())
    assert not copied & left_out, copied & left_out
    assert not (fresh / "data_loader" / "data").exists()  # the text example's corpus
    assert not copied & TEMPLATE_ONLY and not [rel for rel in copied if rel.endswith(".jinja")]
    tracked = set(git(template, "ls-files").splitlines())
    kept = tracked - left_out - TEMPLATE_ONLY - {rel for rel in tracked if rel.endswith(".jinja") or rel.startswith("data_loader/data/")}
    rendered = {"README.md", "pyproject.toml", "model/__init__.py", "data_loader/__init__.py"}
    assert copied == kept | {"TEMPLATE.md", ".copier-answers.yml"}, copied ^ (kept | {"TEMPLATE.md", ".copier-answers.yml"})
    assert all((fresh / rel).read_bytes() == (template / rel).read_bytes() for rel in kept - rendered)
    assert os.access(fresh / ".ci" / "run", os.X_OK)
    # Its skip table names only configs it has: the others' lines are the one difference but the name.
    with open(fresh / "pyproject.toml", "rb") as handle:
        skipped = tomllib.load(handle)["tool"]["pytorch-template"]["experiment-tests"]["skip"]
    assert all((fresh / rel).is_file() for rel in skipped), skipped
    ours, theirs = (template / "pyproject.toml").read_text().splitlines(), (fresh / "pyproject.toml").read_text().splitlines()
    dropped = [line for line in ours if line not in theirs]
    assert dropped and all(line.startswith('"configs/') and line.split('"')[1] in left_out for line in dropped[1:]), dropped
    assert dropped[0] == 'name = "pytorch-template"' and len(theirs) == len(ours) - len(dropped) + 1
    model_init, loader_init = (fresh / "model" / "__init__.py").read_text(), (fresh / "data_loader" / "__init__.py").read_text()
    assert "DigitsCNN" in model_init and "VAE" not in model_init and "TextClassifier" not in model_init
    assert "DigitsDataLoader" in loader_init and "TextDataLoader" not in loader_init and "digit_shards" not in loader_init
    linted = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ruff"), "check", "--no-cache", "model/__init__.py", "data_loader/__init__.py"],
        cwd=fresh,
        capture_output=True,
        text=True,
    )
    assert linted.returncode == 0, linted.stdout


@pytest.fixture(scope="module")
def updated(template, tmp_path_factory):
    """A copy the user made theirs (a file of their own, an edit, an edit where the template edits
    too), a later template commit (an engine file, the README, the copy's README, that line), and
    the update: what ``main(["--update", DIR])`` printed, and the folders."""
    root = tmp_path_factory.mktemp("update")
    source = thin_template(template, root / "template")
    copy = root / "Mine"
    new_project.create_project(source, copy, "Mine")
    write_tree(copy, {"notes/mine.py": "MINE = 1\n"})
    config = (copy / "config.json").read_text()
    (copy / "config.json").write_text(config.replace('"epochs": 30', '"epochs": 7'))
    engine = (copy / "trainer" / "__init__.py").read_text().splitlines(keepends=True)
    (copy / "trainer" / "__init__.py").write_text("".join(['"""The user\'s first line."""\n', *engine[1:]]))
    commit_all(copy, "mine")

    with (source / "base" / "__init__.py").open("a") as f:
        f.write("# a later engine fix\n")
    with (source / "README.md").open("a") as f:
        f.write("\nA later manual line.\n")
    with (source / "README.md.jinja").open("a") as f:
        f.write("\nA later line of the copy's README.\n")
    (source / "trainer" / "__init__.py").write_text("".join(['"""The template\'s first line."""\n', *engine[1:]]))
    commit_all(source, "a later template commit")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(new_project, "TEMPLATE", source)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = new_project.main(["--update", str(copy)])
    return {"code": code, "out": out.getvalue(), "err": err.getvalue(), "copy": copy, "source": source, "config": config, "engine": engine}


def test_an_update_brings_the_templates_later_commit_and_keeps_the_users_work(updated):
    copy, source = updated["copy"], updated["source"]
    assert updated["code"] == 0, updated["err"]
    assert (copy / "base" / "__init__.py").read_text() == (source / "base" / "__init__.py").read_text()
    assert (copy / "TEMPLATE.md").read_text().endswith("\nA later manual line.\n")
    assert (copy / "README.md").read_text().startswith("# Mine\n") and (copy / "README.md").read_text().endswith(
        "\nA later line of the copy's README.\n"
    )
    assert (copy / "notes" / "mine.py").read_text() == "MINE = 1\n"
    assert (copy / "config.json").read_text() == updated["config"].replace('"epochs": 30', '"epochs": 7')
    answers = yaml.safe_load((copy / ".copier-answers.yml").read_text())
    assert git(source, "rev-parse", "HEAD").strip().startswith(answers["_commit"])


def test_a_line_both_changed_is_a_named_conflict_with_markers(updated):
    copy = updated["copy"]
    text = (copy / "trainer" / "__init__.py").read_text()
    assert (
        '<<<<<<< before updating\n"""The user\'s first line."""\n=======\n"""The template\'s first line."""\n>>>>>>> after updating\n'
        in text
    )
    assert text.endswith("".join(updated["engine"][1:]))  # the rest of the file as it was
    lines = [line for line in updated["out"].splitlines() if "conflict" in line]
    assert lines == ["conflicts in 1 file: trainer/__init__.py (resolve the <<<<<<< markers, then commit)"]
    assert git(copy, "diff", "--name-only", "--diff-filter=U").split() == ["trainer/__init__.py"]


def test_a_copy_with_uncommitted_changes_is_refused_with_one_line(updated, capsys, monkeypatch):
    copy = updated["copy"]  # the update above is not committed yet
    before = snapshot(copy)
    monkeypatch.setattr(new_project, "TEMPLATE", updated["source"])

    assert new_project.main(["--update", str(copy)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {copy}: ") and "dirty" in err and "commit or stash" in err, err
    assert snapshot(copy) == before


def test_an_update_from_another_template_than_the_copys_is_refused(template, updated):
    """Copier updates from the template the copy records; another checkout's --update says which one to use."""
    before = snapshot(updated["copy"])
    with pytest.raises(
        UserError, match=f"was copied from the template at {re.escape(str(updated['source']))}, not {re.escape(str(template))}"
    ):
        new_project.update_project(template, updated["copy"])
    assert snapshot(updated["copy"]) == before


def test_a_template_with_uncommitted_changes_is_refused(template, tmp_path):
    source = later_template(template, tmp_path / "template")
    (source / "draft.py").write_text("X = 1\n")
    target = tmp_path / "P"

    with pytest.raises(UserError, match=r"uncommitted changes \(draft.py\); commit or stash them"):
        new_project.create_project(source, target, "P")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["template"]


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


def test_force_adds_template_files_and_keeps_the_users(template, tmp_path, monkeypatch, capsys):
    """--force into a folder of the user's, every example kept: the rendered files are the template's own."""
    target = tmp_path / "Mine"
    write_tree(target, {"notes.txt": "my notes\n", "model/my_model.py": "# mine\n", "config.json": "{}", "saved/exp/run/train.log": "x\n"})
    mine = {rel: (target / rel).read_bytes() for rel in ("notes.txt", "model/my_model.py", "saved/exp/run/train.log")}
    monkeypatch.setattr(new_project, "TEMPLATE", template)

    assert new_project.main([str(target), "--force", "--name", "mine", "--examples", "all"]) == 0, capsys.readouterr().err

    assert all((target / rel).read_bytes() == data for rel, data in mine.items())
    assert (target / "config.json").read_bytes() == (template / "config.json").read_bytes()
    assert (target / "train.py").read_bytes() == (template / "train.py").read_bytes()
    assert (target / ".copier-answers.yml").is_file()
    assert (target / ".git").is_dir()  # a repository, with nothing committed for the user: they review first
    assert subprocess.run(["git", "-C", str(target), "rev-parse", "HEAD"], capture_output=True).returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Mine"]  # no staging folder left behind
    # Every example kept: the .jinja files render the template's own.
    assert set().union(*EXAMPLE_FILES.values()) <= files_under(target)
    for rel in ("model/__init__.py", "data_loader/__init__.py"):
        assert (target / rel).read_text() == (template / rel).read_text(), rel
    assert (target / "TEMPLATE.md").read_text() == (template / "README.md").read_text()  # the manual travels along
    old, new = (template / "pyproject.toml").read_text().splitlines(), (target / "pyproject.toml").read_text().splitlines()
    assert [(a, b) for a, b in zip(old, new, strict=True) if a != b] == [('name = "pytorch-template"', 'name = "mine"')]
    readme = (target / "README.md").read_text()
    assert readme.startswith("# mine\n")
    first_screen = "\n".join(readme.splitlines()[:45])
    assert (
        "model/model.py" in first_screen
        and "config.json" in first_screen
        and "copier update" in first_screen
        and "--update" in first_screen
    )


def test_force_refuses_a_folder_where_the_template_has_a_file(fresh, tmp_path):
    """The check create_project runs, with --force, on the files Copier rendered, before it writes one."""
    target = tmp_path / "Mine"
    write_tree(target, {"train.py/mine.txt": "a folder in the way\n", "model": "a file where the template has a folder\n"})
    rendered = sorted(PurePosixPath(rel) for rel in files_under(fresh))

    with pytest.raises(UserError, match=re.escape(str(target / "model")) + " is a file but the template has a folder"):
        new_project.check_overwrites(target, rendered)
    (target / "model").unlink()
    with pytest.raises(UserError, match=re.escape(str(target / "train.py")) + " is not a file"):
        new_project.check_overwrites(target, rendered)


@pytest.mark.parametrize("where", ["inside", "itself", "parent"])
def test_refuses_a_target_inside_or_around_the_template(template, where):
    target = {"inside": template / "sub" / "Proj", "itself": template, "parent": template.parent}[where]
    before = snapshot(template.parent)

    with pytest.raises(UserError, match="template"):
        new_project.create_project(template, target, "Proj", force=True)
    assert snapshot(template.parent) == before


def test_project_names_and_examples(tmp_path, capsys):
    assert new_project.project_name(None, tmp_path / "My Project!") == "My-Project"
    assert new_project.project_name("my_exp.v2", tmp_path / "x") == "my_exp.v2"
    assert new_project.main([str(tmp_path / "x"), "--name", "my exp"]) == EXIT_USER_ERROR
    assert capsys.readouterr().err.startswith("error: --name: 'my exp'")
    assert new_project.main([str(tmp_path / "x"), "--name", "a" * 300]) == EXIT_USER_ERROR  # valid characters, but no name
    err = capsys.readouterr().err
    assert err.startswith("error: --name: 300 characters is too long") and err.count("\n") == 1
    assert new_project.project_name("a" * new_project.MAX_NAME, tmp_path / "x") == "a" * new_project.MAX_NAME
    assert new_project.parse_examples("") == [] and new_project.parse_examples("vae, text,vae") == ["text", "vae"]
    assert new_project.parse_examples("all") == list(new_project.EXAMPLES) == list(EXAMPLE_FILES)
    assert new_project.main([str(tmp_path / "x"), "--examples", "text,cats"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: --examples: cats is not a shipped example; choose from mnist, text,") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_update_of_a_folder_that_is_no_copy_is_one_line(tmp_path, capsys):
    assert new_project.main(["--update", str(tmp_path)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: no .copier-answers.yml") and err.count("\n") == 1


def test_help_says_force_never_deletes(capsys):
    with pytest.raises(SystemExit):
        new_project.parse_args(["--help"])
    assert "never delete" in " ".join(capsys.readouterr().out.split())


@pytest.mark.slow
def test_new_project_is_clean_green_and_trains(fresh, tmp_path):
    target = fresh

    copied = files_under(target)
    for absent in (".venv", "data", "new_project.py", "copier.yml"):
        assert not (target / absent).exists(), absent
    assert not [rel for rel in copied if is_cache(rel)]
    assert [rel for rel in copied if rel.startswith("saved/")] == ["saved/.gitkeep"]
    assert not any(p.is_symlink() for p in target.rglob("*"))
    # Its own pyproject and README.
    assert re.search(r'^\[project\]\nname = "Fresh"$', (target / "pyproject.toml").read_text(), re.MULTILINE)
    readme = (target / "README.md").read_text()
    assert readme.startswith("# Fresh\n") and "make train" in readme and "make test" in readme and "saved/<name>/<run_id>/" in readme
    named = set(re.findall(r"`((?:\w+/)+\w+\.py)`", readme)) | {"config.json"}  # the files it tells a user to edit
    assert {"data_loader/data_loaders.py", "data_loader/__init__.py", "model/model.py", "model/__init__.py"} <= named
    assert all((target / rel).is_file() for rel in named), named

    # A few of its own tests pass in the current environment (the layers, every config building, the
    # manual's snippets, this module, which skips there): the copy stands alone. The template's suite
    # runs them here already; a copy differs only in what Copier renders or leaves out.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"} | {"PYTHONPATH": str(target)}
    chosen = [
        "tests/test_structure.py",
        "tests/examples/test_manual.py",
        "tests/test_new_project.py",
        "tests/test_experiments.py::test_it_loads_validates_and_builds_even_where_it_cannot_run_tiny",
    ]
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



THEIR_FILES = {
    "datasets/prices.csv": "area,rooms,price\n" + "".join(f"{30 + 7 * i % 90},{1 + i % 5},{50 + 3 * (30 + 7 * i % 90) + 9 * (1 + i % 5)}\n" for i in range(120)),
    "data_loader/data_loaders.py": """import csv

import torch
from torch.utils.data import TensorDataset

from base import BaseDataLoader


class PricesDataLoader(BaseDataLoader):
    def __init__(self, csv_path="datasets/prices.csv", batch_size=16, training=True, **kwargs):
        with open(csv_path) as handle:
            rows = torch.tensor([[float(v) for v in row] for row in list(csv.reader(handle))[1:]])
        rows = (rows - rows.mean(0)) / rows.std(0)
        part = rows[:96] if training else rows[96:]
        super().__init__(TensorDataset(part[:, :2], part[:, 2]), batch_size, training=training, **kwargs)
""",
    "data_loader/__init__.py": 'from data_loader.data_loaders import PricesDataLoader\n\n__all__ = ["PricesDataLoader"]\n',
    "model/model.py": """from torch import nn

from base import BaseModel


class PriceNet(BaseModel):
    def __init__(self, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)
""",
    "model/__init__.py": 'from model.model import PriceNet\n\n__all__ = ["PriceNet"]\n',
    "model/loss.py": "import torch.nn.functional as F\n\n\ndef huber(output, target):\n    return F.huber_loss(output, target)\n",
    "model/metric.py": "def mae(output, target):\n    return (output - target).abs().mean()\n",
    "config.json": json.dumps({
        "name": "prices", "seed": 1,
        "arch": {"type": "PriceNet", "args": {"hidden": 8}},
        "data_loader": {"type": "PricesDataLoader", "args": {"batch_size": 16, "validation_split": 0.25}},
        "loss": "huber", "metrics": ["mae"], "optimizer": {"type": "AdamW", "args": {"lr": 0.01}},
        "trainer": {"epochs": 5, "save_dir": "saved/", "monitor": "min val_mae"},
    }),
}  # fmt: skip
"""A user's own experiment in place of the digits example: every file of it rewritten, its configs removed."""

MY_TEST = """from helpers import ROOT

from app.config import Config
from model import PriceNet


def test_my_model_is_built_from_my_config():
    assert isinstance(Config.from_file(ROOT / "config.json").init_obj("arch"), PriceNet)
"""


@pytest.mark.slow
def test_a_copy_whose_example_is_replaced_keeps_its_tests_green_and_they_catch_its_broken_config(template, tmp_path):
    """The generated tests train the user's experiment and fail when its config is broken; the digits
    example's tests skip, naming what is gone; the engine's structure test holds. No test edited."""
    target = tmp_path / "Prices"
    new_project.create_project(template, target, "Prices")
    write_tree(target, THEIR_FILES)
    for rel in ("configs/digits.yaml", "configs/digits_space.yaml"):
        (target / rel).unlink()
    base = {key: value for key, value in json.loads(THEIR_FILES["config.json"]).items() if key != "arch"}
    write_tree(target, {  # a family: a base that is no experiment alone, and a variant of it
        "configs/base.yaml": yaml.safe_dump(base),
        "configs/wide.yaml": "extends: base.yaml\nname: prices_wide\narch: {type: PriceNet, args: {hidden: 32}}\n",
        "tests/test_prices.py": MY_TEST,  # a test of their own beside the engine's, naming their code
    })
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"} | {"PYTHONPATH": str(target)}

    def nested(*tests: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'nested'}", *tests]
        return subprocess.run(command, cwd=target, env=env, capture_output=True, text=True, timeout=600)

    green = nested("tests/test_experiments.py", "tests/examples/test_digits.py", "tests/test_prices.py")
    assert green.returncode == 0, green.stdout[-3000:] + green.stderr[-2000:]
    assert "tests/examples/test_digits.py: the digits example needs model:DigitsCNN, data_loader:DigitsDataLoader" in green.stdout
    assert "configs/base.yaml: a base that configs/wide.yaml extends, not an experiment on its own" in green.stdout
    # config.json's and wide.yaml's 3 each (build, train and resume, test and predict), and their own test
    assert re.search(r"\b7 passed\b", green.stdout), green.stdout[-2000:]
    for broken, expected in (
        ({"arch": {"type": "PriceNet", "args": {"hiden": 8}}}, "arch.args.hiden: PriceNet has no parameter 'hiden'"),
        ({"trainer": {"epochs": 5, "save_dir": "saved/", "monitor": "min val_r2"}}, "trainer.monitor: the run does not produce 'val_r2'"),
    ):
        (target / "config.json").write_text(json.dumps({**json.loads(THEIR_FILES["config.json"]), **broken}))
        red = nested("tests/test_experiments.py", "-x")
        assert red.returncode == 1 and expected in red.stdout, red.stdout[-3000:]

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
def test_a_new_model_and_data_loader_need_no_change_in_trainer_or_base(template, tmp_path):
    target = tmp_path / "Ext"
    new_project.create_project(template, target, "Ext")
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
        theirs = {rel for rel in files_under(template / folder) if not is_cache(rel)}
        assert ours == theirs, folder
        assert all((target / folder / rel).read_bytes() == (template / folder / rel).read_bytes() for rel in ours), folder
