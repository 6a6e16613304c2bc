"""Start a new project from this template, and bring the template's later commits into it, with Copier.

    python new_project.py ../MyProject                    a new folder, project name "MyProject", the digits example
    python new_project.py ../my-exp --name my_exp          choose the project name (pyproject.toml, README title)
    python new_project.py ../mine --examples text,vae      keep other shipped examples too (or: all)
    python new_project.py ../existing --force              add the template's files to a non-empty folder
    python new_project.py --update ../MyProject            merge the template's new commits into a copy

Copier (``copier.yml`` at the template root says what a copy holds) renders the copy from this
checkout's committed HEAD, so a template with uncommitted changes is refused: a copy records the
commit it came from (``.copier-answers.yml``), and an update needs that commit to exist. A new
folder becomes a git repository with one first commit, so it can be updated at once; with
``--force`` the files are added to the folder and left for you to review and commit.

Copier is a dependency (pyproject.toml), so run this with the template's environment:
``make new-project DIR=../MyProject`` or ``.venv/bin/python new_project.py ...``. Only ``--help``
and the checks of the command line work without it; nothing here imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from utils.ending import finish, leave
from utils.errors import UserError
from utils.files import describe_os_error

TEMPLATE = Path(__file__).resolve().parent

EXAMPLES = ("mnist", "text", "transfer", "streams", "vae", "diabetes", "gan", "distill")
"""The shipped examples a copy may keep besides digits (copier.yml's ``examples`` choices): digits always
stays, since config.json trains it and its files are the ones a copy's README says to edit."""

PROJECT_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")  # PEP 508 project names
MAX_NAME = 100
"""Longest project name: PEP 508 sets no bound, but the name titles the README and names folders
and packages, and 255 bytes is a file name's limit; a longer one is a slip, not a name."""

FALLBACK_IDENTITY = ("-c", "user.name=new_project.py", "-c", "user.email=new_project.py@localhost")
"""Who makes a copy's first commit where git knows no user (a fresh machine, CI); a configured user wins."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start a new project from this template (a Copier copy of its committed HEAD), or update one with the template's later commits.",
        epilog="Never deletes anything: without --force the target must be new or empty; "
        "with --force only the template's own files are added or overwritten, and every other file in the folder is left alone. "
        "--update refuses a copy with uncommitted changes and shows conflicts as <<<<<<< markers in the files it names.",
    )
    parser.add_argument(
        "target", help="folder of the new project, e.g. ../MyProject (created if missing); with --update, the copy to update"
    )
    parser.add_argument("--name", help="project name for pyproject.toml and the README title (default: the folder's name)")
    parser.add_argument(
        "--examples",
        default="",
        help=f"shipped examples to keep besides digits, comma-separated, from {', '.join(EXAMPLES)}; or 'all' (default: digits only)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into an existing non-empty folder: add or overwrite the template's files only, never delete any file",
    )
    parser.add_argument(
        "--update", action="store_true", help="merge the template's commits since the copy's into the copy TARGET (Copier's update)"
    )
    args = parser.parse_args(argv)
    if args.update and (args.name is not None or args.examples or args.force):
        parser.error("--update takes only the copy's folder: a copy keeps the name and examples it was made with")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        try:
            target = Path(args.target).expanduser().resolve()
        except RuntimeError:  # expanduser: ~name of a user this machine does not have
            raise UserError(f"{args.target}: names no user of this machine; write the folder's path out") from None
        if args.update:
            commit, conflicts = update_project(TEMPLATE, target)
            print(f"updated {target} to template commit {commit}; review with git diff, then commit")
            if conflicts:
                print(f"conflicts in {len(conflicts)} file{'s' if len(conflicts) > 1 else ''}: {', '.join(conflicts)} (resolve the <<<<<<< markers, then commit)")
            return 0
        name = project_name(args.name, target)
        examples = parse_examples(args.examples)
        written = create_project(TEMPLATE, target, name, examples, args.force)
        print(f"created project {name!r} in {target} ({len(written)} files from {TEMPLATE} at commit {template_commit(TEMPLATE)})")
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


def parse_examples(text: str) -> list[str]:
    """``--examples``: a comma-separated list of :data:`EXAMPLES`, ``all``, or nothing (digits only)."""
    if text.strip() == "all":
        return list(EXAMPLES)
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in EXAMPLES]
    if unknown:
        raise UserError(
            f"--examples: {', '.join(unknown)} is not a shipped example; choose from {', '.join(EXAMPLES)} (digits is always kept), or all"
        )
    return sorted(set(chosen), key=EXAMPLES.index)


def create_project(
    template: Path, target: Path, name: str, examples: list[str] | tuple[str, ...] = (), force: bool = False
) -> list[PurePosixPath]:
    """Copy ``template`` (its committed HEAD) into ``target`` as project ``name``; returns the paths written.

    Every check runs before the first write, so a refusal leaves the disk untouched. Copier renders
    the project into a hidden folder beside the target; a new project is committed there and renamed
    into place, so a failure (a full disk, a read-only file system) leaves nothing. With ``--force``
    the rendered files are copied over: what was added is removed on failure and what was overwritten
    gets its old content back. File-system trouble is one line.
    """
    template, target = template.resolve(), target.resolve()
    check_target(template, target, force)
    staging = target.with_name(f".{target.name[:200]}.new-{os.getpid()}")
    try:
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise UserError(
                f"{target}: cannot write the project ({describe_os_error(target, exc)}); choose a writable folder with free space"
            ) from None
        commit = template_commit(template)
        render(template, staging, name, list(examples))
        written = sorted(PurePosixPath(p.relative_to(staging).as_posix()) for p in staging.rglob("*") if p.is_file())
        try:
            if force and target.is_dir() and any(target.iterdir()):
                check_overwrites(target, written)
                with undone_on_failure(target, written):
                    for rel in written:
                        destination = target.joinpath(rel)
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(staging.joinpath(rel), destination)  # content and permission bits (.ci/run stays executable)
                if not (target / ".git").exists():
                    git(target, "init", "-q")
            else:
                git(staging, "init", "-q")
                git(staging, "add", "-A")
                git(staging, *identity(staging), "commit", "-q", "--no-verify", "-m", f"Start {name} from the pytorch-template at {commit}")
                os.rename(staging, target)  # atomic; replaces the target only if it is an empty folder
        except OSError as exc:
            raise UserError(
                f"{target}: cannot write the project ({describe_os_error(target, exc)}); choose a writable folder with free space"
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def render(template: Path, destination: Path, name: str, examples: list[str]) -> None:
    """Copier's copy of the template's HEAD into ``destination`` (an empty folder), without questions."""
    copier = import_copier()
    try:
        copier.run_copy(
            str(template),
            destination,
            data={"project_name": name, "examples": examples},
            vcs_ref="HEAD",
            defaults=True,
            overwrite=True,
            quiet=True,
        )
    except copier.errors.CopierError as exc:
        raise UserError(f"{template}: Copier could not copy the template ({one_line(exc)})") from None


def update_project(template: Path, target: Path) -> tuple[str, list[str]]:
    """Copier's update of the copy ``target`` to ``template``'s HEAD: returns the commit and the files with conflicts.

    A three-way merge of the template's changes since the copy's recorded commit: the user's own files
    and edits stay; where both sides changed the same lines, the file holds inline markers
    (``<<<<<<< before updating`` ... ``>>>>>>> after updating``) and git lists it as unmerged. The
    update is left uncommitted for the user to review. ``template`` must be the copy's recorded source
    (``_src_path``): Copier updates from there, and ``copier update`` in the copy does the same.
    """
    template, target = template.resolve(), target.resolve()
    answers = target / ".copier-answers.yml"
    if not answers.is_file():
        raise UserError(
            f"{target}: no .copier-answers.yml, so it is not a copy made by new_project.py; make one with python new_project.py DIR"
        )
    if not (target / ".git").exists():
        raise UserError(
            f"{target}: not a git repository; an update merges into committed files: run git init, git add -A and git commit there first"
        )
    recorded = recorded_source(answers)
    if recorded != template:
        raise UserError(
            f"{target} was copied from the template at {recorded}, not {template}; run that one's new_project.py --update, or copier update in the copy"
        )
    commit = template_commit(template)
    copier = import_copier()
    try:
        copier.run_update(target, vcs_ref="HEAD", defaults=True, overwrite=True, quiet=True, conflict="inline", skip_answered=True)
    except copier.errors.CopierError as exc:
        raise UserError(f"{target}: {one_line(exc)}") from None
    unmerged = git(target, "diff", "--name-only", "--diff-filter=U").splitlines()
    return commit, sorted(set(unmerged))


def recorded_source(answers: Path) -> Path | None:
    """The template folder a copy's ``.copier-answers.yml`` names (``_src_path``), or None for a remote one."""
    import yaml  # a dependency of Copier and of the project

    try:
        source = (yaml.safe_load(answers.read_text()) or {}).get("_src_path")
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise UserError(f"{answers}: cannot read it ({one_line(exc)}); restore it from git (git checkout -- .copier-answers.yml)") from None
    if not isinstance(source, str) or "://" in source or source.startswith("git@"):
        return None
    return Path(source).expanduser().resolve()


def import_copier():  # noqa: ANN201 (a module)
    """Copier, imported when it is needed, so ``--help`` and the argument checks run without it."""
    try:
        import copier
        import copier.errors
    except ImportError:
        raise UserError(
            "Copier is not installed: run make install, then .venv/bin/python new_project.py ... (or make new-project DIR=...)"
        ) from None
    return copier


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def git(folder: Path, *args: str) -> str:
    """``git -C folder args``: its output, or one line naming what failed."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("git is not installed; new_project.py needs it (Copier copies a template's commits): install git") from None
    if done.returncode != 0:
        command = next((arg for arg in args if not arg.startswith("-") and "=" not in arg), "")
        raise UserError(f"{folder}: git {command} failed ({one_line(done.stderr) or f'exit {done.returncode}'})")
    return done.stdout


def identity(folder: Path) -> tuple[str, ...]:
    """Nothing where git knows the user; else :data:`FALLBACK_IDENTITY`."""
    known = subprocess.run(["git", "-C", str(folder), "config", "user.email"], capture_output=True, text=True)
    return () if known.returncode == 0 and known.stdout.strip() else FALLBACK_IDENTITY


def template_commit(template: Path) -> str:
    """The template's HEAD commit (short); refuses a template that is not a clean git checkout.

    Copier copies a commit. From a checkout with uncommitted changes it would copy them too and record
    a commit made up on the spot, which a later update could not find, so such a checkout is refused.
    """
    if not (template / ".git").exists():
        raise UserError(
            f"{template}: the template is not a git checkout; clone it with git (a copy records the template commit it came from)"
        )
    dirty = git(template, "status", "--porcelain").splitlines()
    if dirty:
        first = ", ".join(line[3:] for line in dirty[:3]) + (", ..." if len(dirty) > 3 else "")
        raise UserError(f"{template}: the template has uncommitted changes ({first}); commit or stash them: a copy is made from a commit")
    return git(template, "rev-parse", "--short", "HEAD").strip()


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


if __name__ == "__main__":
    leave(main)
