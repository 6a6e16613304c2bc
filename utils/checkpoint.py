"""Checkpoint files: atomic writes, safe reads, retention.

A checkpoint is a plain dict of tensors and primitives, read with
``torch.load(path, weights_only=True, map_location="cpu")`` so that loading one never runs code.
Keys (``FORMAT`` version 1):

``format, version``      identify the file as ours
``arch``                 the model's type name (for messages)
``model``                ``state_dict`` without ``module.`` / ``_orig_mod.`` prefixes
``optimizer``            optimizer ``state_dict``
``lr_scheduler``         scheduler ``state_dict`` or None
``scaler``               fp16 GradScaler ``state_dict`` or None
``epoch``                the epoch in progress (1-based); complete when ``batch_in_epoch`` is 0
``batch_in_epoch``       batches of ``epoch`` already trained (0: the epoch is complete)
``global_step``          optimizer steps taken
``monitor_best``, ``not_improved_count``   monitoring and early-stop state
``ranks``                one dict per rank: ``rng`` (Python, NumPy, torch, CUDA states) and, mid-epoch,
                         ``epoch_sums`` / ``epoch_samples`` (running loss and metric sums) and
                         ``metric_batches`` (outputs and targets kept for the metrics; see trainer/epoch_sums.py)
``world_size``           processes that wrote it
``config``               the resolved config as plain data
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch

from utils.errors import UserError

FORMAT = "pytorch-template-checkpoint"
VERSION = 1
_PREFIXES = ("module.", "_orig_mod.")


def clean_state_dict(state_dict: dict) -> dict:
    """Strip DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes (at any nesting)."""
    cleaned = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def save_atomic(state: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then ``os.replace``.

    A crash or ``kill -9`` at any moment leaves either the old file or the new one, never half.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def link_atomic(source: Path, target: Path) -> None:
    """Make ``target`` hold the same bytes as ``source`` (a hard link, else a copy), atomically."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely; missing, truncated or foreign files are a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; pass an existing .pth file with -r")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 119": noise about a file we reject anyway
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - weights_only runs no code: any failure means the bytes are not a checkpoint
        # (garbage raises UnpicklingError mostly, but also IndexError, KeyError, UnicodeDecodeError, ...)
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable checkpoint (truncated, corrupted or not saved by torch: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a checkpoint of this template (no '{FORMAT}' marker); pass a file from a run's checkpoints/ folder")
    if state.get("version", 0) > VERSION:
        raise UserError(f"{path}: checkpoint version {state['version']} is newer than this code understands ({VERSION})")
    return state


def prune_epoch_checkpoints(folder: Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest ``epoch-N.pth``; ``last.pth``/``best.pth`` never go."""
    if keep_last <= 0:
        return []
    numbered = []
    for path in folder.glob("epoch-*.pth"):
        match = re.fullmatch(r"epoch-(\d+)\.pth", path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    numbered.sort()
    doomed = [path for _, path in numbered[:-keep_last]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files that a killed process left behind mid-write (never a finished checkpoint)."""
    stale = [path for path in Path(folder).glob(".*.pth.tmp-*") if path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory a checkpoint belongs to (``<run_dir>/checkpoints/<file>``)."""
    checkpoint = Path(checkpoint).resolve()
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
