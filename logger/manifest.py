"""``manifest.json``: what a run was, so that two runs can be compared ("what changed?").

Written by rank 0 when a run starts, and extended by every resume (``resumes``): the command
line, the config's hash and its chain of files (``config_files``: each file ``extends`` read, bases
first, with its sha256; empty for a config read back from a checkpoint), the code's git commit and dirty flag (with ``git diff HEAD`` saved as
``git.diff`` beside it), Python, torch, CUDA and cuDNN versions, every installed package's
version, the host, the world size and devices, the seeds, and a fingerprint of the data (sizes,
and a hash of a few samples or of the file list).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError
from utils.files import read_json, write_atomic
from utils.nested import leaves

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "packages": installed_packages(),
    }


def installed_packages() -> dict[str, str]:
    """Every installed distribution's version, by normalised name, from the names of the
    ``*.dist-info`` folders on the path (``name-version.dist-info``): reading each package's
    metadata would cost a noticeable share of every run's start."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            folders = [p for p in Path(entry or ".").iterdir() if p.suffix in (".dist-info", ".egg-info")]
        except OSError:
            continue
        for folder in folders:
            name, _, version = folder.stem.partition("-")
            if name and version:
                found.setdefault(re.sub(r"[-_.]+", "-", name).lower(), version.split("-")[0])
    return dict(sorted(found.items()))


def command_line(script: str, argv: list[str]) -> str:
    """``python train.py <argv>``, with the torchrun world size when launched by torchrun."""
    launcher = f"torchrun (world size {os.environ['WORLD_SIZE']}) " if "WORLD_SIZE" in os.environ else ""
    return launcher + shlex.join(["python", script, *argv])


def git_state(run_dir: Path, diff_name: str = "git.diff") -> dict | None:
    """Commit and dirty flag of the project's repository; the uncommitted diff goes to ``diff_name``."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=20, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        diff = git("diff", "HEAD") if dirty else ""
    except (OSError, subprocess.SubprocessError):
        return None  # not a git repository, or no git
    if diff:
        write_atomic(run_dir / diff_name, diff, "run directory", "make it writable")
    return {"commit": commit, "dirty": dirty, "diff": diff_name if diff else None}


def fingerprint(loader: Any) -> dict | None:
    """Size and a short hash of a data loader's data: its file list when it has one, else a few samples."""
    if loader is None:
        return None
    loader = getattr(loader, "loader", loader)  # a plain loader wrapped for epochs (dataflow/epochs.py)
    if callable(getattr(loader, "fingerprint", None)):
        return loader.fingerprint()
    dataset = getattr(loader, "base_dataset", None) or getattr(loader, "dataset", None)
    try:
        size = len(dataset)
    except TypeError:
        return {"samples": None, "hash": None}
    digest = hashlib.sha256()
    files = _file_list(dataset)
    if files is not None:
        digest.update("\n".join(map(str, files)).encode())
        basis = "file list"
    else:
        for index in sorted({0, size // 2, size - 1} - {-1}):
            for leaf in leaves(dataset[index]):
                digest.update(leaf.numpy().tobytes() if isinstance(leaf, torch.Tensor) else repr(leaf).encode())
        basis = "samples 0, n/2, n-1"
    return {"samples": size, "hash": digest.hexdigest()[:16], "of": basis}


def _file_list(dataset: Any) -> list | None:
    while dataset is not None:
        for name in ("samples", "files", "rows"):
            value = getattr(dataset, name, None)
            if isinstance(value, list):
                return value
        dataset = getattr(dataset, "dataset", None)  # through Subset and wrappers
    return None


def write_manifest(
    run_dir: Path, command: str, config_hash: str, world_size: int, devices: list[str], seed: int, data: dict, config_files: list | None = None
) -> None:
    """A new run's manifest. ``config_files``: the chain of config files read (bases first), each
    ``{path, sha256}``, so the run can be told apart from one whose base has changed since."""
    manifest = {
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config_hash": config_hash,
        "config_files": config_files or [],
        "git": git_state(run_dir),
        **environment(),
        "world_size": world_size,
        "devices": devices,
        "seeds": {"config": seed, "per_process": [seed + rank for rank in range(world_size)]},
        "data": data,
        "resumes": [],
    }
    _write(run_dir / "manifest.json", manifest)


def extend_manifest(
    run_dir: Path,
    manifest: dict | None,
    command: str,
    checkpoint: str,
    config_hash: str,
    world_size: int,
    devices: list[str],
    config_files: list | None = None,
) -> None:
    """Record a resume: when, how, from which checkpoint, with which code and config (``manifest`` is
    the run's ``manifest.json``, read beforehand)."""
    path = run_dir / "manifest.json"
    manifest = dict(manifest) if manifest is not None else {"resumes": []}
    if not isinstance(manifest.get("resumes"), list):
        manifest["resumes"] = []
    number = len(manifest.setdefault("resumes", [])) + 1
    manifest["resumes"].append(
        {
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checkpoint": checkpoint,
            "config_hash": config_hash,
            "config_files": config_files or [],
            "git": git_state(run_dir, f"git-resume-{number}.diff"),
            "torch": torch.__version__,
            "world_size": world_size,
            "devices": devices,
        }
    )
    _write(path, manifest)


def read_manifest(run_dir: Path, fix: str | None = None) -> dict | None:
    """The run's ``manifest.json``, or None when it has none: the one reader of the file.

    Strict with a ``fix`` (every problem is one line ending with it: a resume, ``runs.py``);
    without one, the lenient mode of best-effort readers (the end record, a tracker's tags): a
    file that cannot be read, or holds no mapping, is None, since what they add is never worth a
    failed run."""
    path = Path(run_dir) / "manifest.json"
    if not os.path.lexists(path):
        return None
    if fix is not None:
        return read_json(path, "run's manifest", fix)
    try:
        return read_json(path, "run's manifest", "")
    except UserError:
        return None


def record_end(run_dir: Path, state: str, epoch: int | None, reason: str) -> None:
    """How this session of the run ended, on its entry (the run's, or its latest resume's):
    ``{"state": "finished" | "stopped" | "failed", "at", "epoch", "reason"}``. A session without
    one that no process holds any more was killed (``runs.py`` says "failed"). Best effort: a
    manifest that cannot be read or written here is left as it is (the run's outcome is not changed
    by its record)."""
    path = run_dir / "manifest.json"
    manifest = read_manifest(run_dir)
    if manifest is None:
        return
    resumes = manifest.get("resumes")
    session = resumes[-1] if isinstance(resumes, list) and resumes and isinstance(resumes[-1], dict) else manifest
    session["ended"] = {"state": state, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "epoch": epoch, "reason": reason}
    try:
        _write(path, manifest)
    except UserError:
        pass


def _write(path: Path, manifest: dict) -> None:
    write_atomic(path, json.dumps(manifest, indent=2, default=str) + "\n", "run directory", "make it writable")
