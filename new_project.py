"""Start a new project from this template: a clean copy that is green from its first commit.

    python new_project.py ../MyProject                 a new folder named MyProject, project name "MyProject"
    python new_project.py ../my-exp --name my_exp      choose the project name (pyproject.toml, README title)
    python new_project.py ../existing --force          add the template's files to a non-empty folder

The copy holds the template's code, configs, tests, Makefile, CI script and ``.gitignore``, a
``pyproject.toml`` with the new name, and a short README of its own. It leaves out what belongs
to this checkout only: ``.git``, ``.venv``, runs under ``saved/`` (``saved/.gitkeep`` stays),
downloads under the root ``data/``, tool caches, and this script. Rules on root names match only
at the template root (``data_loader/data/`` ships with the template and is copied); cache rules
match at any depth. Symlinks are copied as the files they point to, so the project stands alone.

Only the standard library is used, so this runs before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from utils.ending import finish, leave
from utils.errors import UserError
from utils.files import describe_os_error

TEMPLATE = Path(__file__).resolve().parent

# Names skipped only at the template root: this checkout's history, environment, runs, downloads,
# and the files this script writes itself (README.md, pyproject.toml, saved/.gitkeep).
ROOT_SKIP = frozenset({".git", ".venv", "saved", "data", "new_project.py", "README.md", "pyproject.toml"})
# Tool caches, skipped at any depth.
CACHE_PATTERNS = ("__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".ipynb_checkpoints", "*.egg-info", "*.pyc", ".DS_Store")

PROJECT_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")  # PEP 508 project names
MAX_NAME = 100
"""Longest project name: PEP 508 sets no bound, but the name titles the README and names folders
and packages, and 255 bytes is a file name's limit; a longer one is a slip, not a name."""

README = """\
# {name}

A PyTorch project started from the config-driven training template: every run is described by a
config file, and everything in it is built by name.

## Two commands

```bash
make train   # first time: builds .venv from pyproject.toml; then trains config.json
make test    # ruff, then the test suite
```

## Make it yours: three places to edit

1. **Data loader**: `data_loader/data_loaders.py`. Subclass `BaseDataLoader` (from `base`), build a
   `Dataset` in `__init__` and pass it to `super().__init__(dataset, batch_size, ...)`; splitting,
   shuffling, resumable order and DDP sharding come with the base class. Export the class from
   `data_loader/__init__.py` so a config can name it.
2. **Model**: `model/model.py`. Subclass `BaseModel` and write `forward`; export it from
   `model/__init__.py`. Losses and metrics live in `model/loss.py` and `model/metric.py`.
3. **Config**: `config.json`. Set `name`, and name your classes in `data_loader.type` and
   `arch.type` with their `args`. Any key can be overridden on the command line:
   `python train.py -c config.json trainer.epochs=3 data_loader.args.batch_size=128`.

`trainer/` and `base/` need no change for a new model or data set (a test in
`tests/test_new_project.py` of the template checks exactly that). After exporting a class from an
`__init__.py`, `make fix` puts the imports in the order `make test`'s linter wants. If your batches
are not `(inputs, target)` tuples or dicts with a `label`, set `trainer.target_key` or give your
data loader an `unpack_batch(self, batch)` method.

The template's full manual, with every config key, resuming, multi-GPU and the engine's
options, is in `TEMPLATE.md`.

## What a run leaves behind

Each run writes one folder, `saved/<name>/<run_id>/`: the resolved `config.json`, `train.log`,
`metrics.jsonl` (one row per epoch), TensorBoard events, and `checkpoints/` (`last.pth`,
`best.pth`, periodic `epoch-<N>.pth`). Resume with
`python train.py -r saved/<name>/<run_id>/checkpoints/last.pth`; evaluate on the test split with
`python test.py -r saved/<name>/<run_id>/checkpoints/best.pth` (writes `test_metrics.json` there),
and write its predictions with `python predict.py -r .../best.pth --out predictions.csv`.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start a new project from this template: copy its code, configs, tests, Makefile and CI script into a new folder.",
        epilog="Never deletes anything: without --force the target must be new or empty; "
        "with --force only the template's own files are added or overwritten, and every other file in the folder is left alone.",
    )
    parser.add_argument("target", help="folder of the new project, e.g. ../MyProject (created if missing)")
    parser.add_argument("--name", help="project name for pyproject.toml and the README title (default: the folder's name)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into an existing non-empty folder: add or overwrite the template's files only, never delete any file",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        try:
            target = Path(args.target).expanduser().resolve()
        except RuntimeError:  # expanduser: ~name of a user this machine does not have
            raise UserError(f"{args.target}: names no user of this machine; write the folder's path out") from None
        name = project_name(args.name, target)
        written = create_project(TEMPLATE, target, name, args.force)
        print(f"created project {name!r} in {target} ({len(written)} files from {TEMPLATE})")
        print(f"next: cd {target} && make test && make train")
        return 0

    return finish(body)


def project_name(name: str | None, target: Path) -> str:
    """The name given with --name (must be valid), or one derived from the folder's name."""
    if name is not None:
        if len(name) > MAX_NAME:
            raise UserError(f"--name: {len(name)} characters is too long for a project name; use at most {MAX_NAME}")
        if not PROJECT_NAME.match(name):
            raise UserError(f"--name: {name!r} is not a project name; use letters, digits, '.', '-' or '_', e.g. {_clean(name)!r}")
        return name
    derived = _clean(target.name)
    if not PROJECT_NAME.match(derived):
        raise UserError(f"cannot derive a project name from folder {target.name!r}; give one with --name NAME")
    return derived


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("._-") or "my-project"


def create_project(template: Path, target: Path, name: str, force: bool = False) -> list[PurePosixPath]:
    """Copy ``template`` into ``target`` as project ``name``; returns the paths written (relative).

    Every check runs before the first write, so a refusal leaves the disk untouched. A new project
    is written into a hidden folder beside the target and renamed into place, so a failure (a full
    disk, a read-only file system) leaves nothing; with ``--force``, what was added is removed and
    what was overwritten gets its old content back. File-system trouble is one line.
    """
    try:
        return _create(template.resolve(), target.resolve(), name, force)
    except OSError as exc:
        raise UserError(f"{target}: cannot write the project ({describe_os_error(target, exc)}); choose a writable folder with free space") from None


def _create(template: Path, target: Path, name: str, force: bool) -> list[PurePosixPath]:
    check_target(template, target, force)
    copies = template_files(template)
    generated = {
        PurePosixPath("pyproject.toml"): set_project_name((template / "pyproject.toml").read_text(), name),
        PurePosixPath("README.md"): README.format(name=name),
        # The template's own manual (config reference, resume, DDP, ...) travels with the project.
        PurePosixPath("TEMPLATE.md"): (template / "README.md").read_text(),
        PurePosixPath("saved/.gitkeep"): "",
    }
    written = [*copies, *generated]
    if force and target.is_dir() and any(target.iterdir()):
        check_overwrites(target, written)
        with undone_on_failure(target, written):
            write_files(template, target, copies, generated)
        return written
    staging = target.with_name(f".{target.name[:200]}.new-{os.getpid()}")
    try:
        staging.mkdir(parents=True)
        write_files(template, staging, copies, generated)
        os.rename(staging, target)  # atomic; replaces the target only if it is an empty folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def write_files(template: Path, root: Path, copies: list[PurePosixPath], generated: dict[PurePosixPath, str]) -> None:
    for rel in copies:
        destination = root.joinpath(rel)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(template.joinpath(rel), destination)  # content and permission bits (.ci/run stays executable)
    for rel, text in generated.items():
        destination = root.joinpath(rel)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text)


@contextlib.contextmanager
def undone_on_failure(target: Path, paths: list[PurePosixPath]) -> Iterator[None]:
    """With --force: if writing fails, files it added go, files it overwrote get their content back."""
    before = {rel: target.joinpath(rel).read_bytes() for rel in paths if target.joinpath(rel).is_file()}
    folders = {path for rel in paths for path in target.joinpath(rel).parents if not path.exists()}
    try:
        yield
    except BaseException:
        for rel in paths:
            path = target.joinpath(rel)
            with contextlib.suppress(OSError):
                if rel in before:
                    path.write_bytes(before[rel])
                elif path.exists():
                    path.unlink()
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def check_target(template: Path, target: Path, force: bool) -> None:
    """Refuse targets that would copy the template into itself or touch a user's files without --force."""
    if target == template or template in target.parents:
        raise UserError(f"{target} is inside the template {template}; choose a folder outside it, e.g. {template.parent / 'MyProject'}")
    if target in template.parents:
        raise UserError(f"{target} contains the template {template}; choose a new folder, e.g. {target / 'MyProject'}")
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a folder; choose a new folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise UserError(
            f"{target} exists and is not empty; choose a new folder, or add --force to write the template's files into it "
            f"(it overwrites only files the template has and deletes nothing)"
        )


def check_overwrites(target: Path, paths: list[PurePosixPath]) -> None:
    """With --force: every path must be a regular file to overwrite or nothing, under real folders.

    A folder or symlink where the template has a file (or a file where it has a folder) would
    need deleting or would send the write outside the project, so it is refused instead.
    """
    for rel in paths:
        for depth in range(1, len(rel.parts) + 1):
            path = target.joinpath(*rel.parts[:depth])
            is_last = depth == len(rel.parts)
            if path.is_symlink():
                raise UserError(f"{path} is a symlink where the template has a {'file' if is_last else 'folder'}; move it away, then retry")
            if not path.exists():
                break
            if is_last and not path.is_file():
                raise UserError(f"{path} is not a file but the template has a file there; move it away, then retry")
            if not is_last and not path.is_dir():
                raise UserError(f"{path} is a file but the template has a folder there; move it away, then retry")


def skipped(rel: PurePosixPath) -> bool:
    """Whether ``rel`` (relative to the template root) stays out of a new project."""
    if len(rel.parts) == 1 and rel.name in ROOT_SKIP:
        return True
    return any(rel.match(pattern) for pattern in CACHE_PATTERNS)


def template_files(template: Path) -> list[PurePosixPath]:
    """The template's files to copy, relative to its root, sorted; symlinks are followed."""
    files: list[PurePosixPath] = []

    def walk(folder: Path, rel: PurePosixPath, seen: frozenset[Path]) -> None:
        for entry in sorted(folder.iterdir()):
            child = rel / entry.name
            if skipped(child):
                continue
            if entry.is_dir():
                real = entry.resolve()
                if real not in seen:  # a symlink back up the tree would never end
                    walk(entry, child, seen | {real})
            elif entry.is_file():
                files.append(child)
            # anything else (a dangling symlink, a socket) has no content to copy

    walk(template, PurePosixPath(), frozenset({template}))
    return files


def set_project_name(pyproject: str, name: str) -> str:
    """``pyproject.toml`` text with ``[project] name`` set to ``name``; every other line unchanged."""
    table = re.search(r"^\[project\][ \t]*\n(.*?)(?=^\[|\Z)", pyproject, flags=re.MULTILINE | re.DOTALL)
    if table is None:
        raise UserError('pyproject.toml: the template has no [project] table; add one with a name = "..." line')
    body, count = re.subn(r"^name[ \t]*=[ \t]*(\"[^\"\n]*\"|'[^'\n]*')", f'name = "{name}"', table.group(1), count=1, flags=re.MULTILINE)
    if count == 0:
        raise UserError('pyproject.toml: the [project] table has no name = "..." line; add one')
    return pyproject[: table.start(1)] + body + pyproject[table.end(1) :]


if __name__ == "__main__":
    leave(main)
