"""Checkpoint files: atomic writes, safe reads, retention, weights for fine-tuning and evaluation.

A checkpoint is data. It is read with ``torch.load(path, weights_only=True, map_location="cpu")``,
which runs no code; the config inside it is resolved under the checkpoint trust rules
(``app/config/names.py``). What a run's checkpoint holds is assembled in one place,
``base/training_state.py`` (``FORMAT`` version 2): one entry per stateful part, ``ranks`` with
each process's own parts, and ``format``, ``version``, ``world_size``, ``arch`` and ``config``.

Besides a run's checkpoints, ``-r`` accepts a plain weights file for evaluation and fine-tuning:
a ``state_dict``, or a dict with a ``"model"`` state_dict (what torch's ``dcp_to_torch`` makes of
a sharded checkpoint). Those carry no config, so ``-c`` must give one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.errors import UserError, first_line

FORMAT = "pytorch-template-checkpoint"
VERSION = 2
_PREFIXES = ("module.", "_orig_mod.")
_WRAPPED = "_checkpoint_wrapped_module."
_TEMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")


def clean_state_dict(state_dict: dict) -> dict:
    """Strip wrapper prefixes from every key: DDP's ``module.`` and torch.compile's ``_orig_mod.``
    in front (repeatedly), activation checkpointing's ``_checkpoint_wrapped_module.`` anywhere."""
    cleaned = {}
    for key, value in state_dict.items():
        key = key.replace(_WRAPPED, "")
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


def temporary_name(path: Path) -> Path:
    """A hidden, unique sibling of ``path`` that names its writer's process id."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def write_error(path: Path, exc: OSError) -> UserError:
    """A failed checkpoint write as one line that says what is intact."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    reason = "the disk is full or a file size limit was reached" if full else (exc.strerror or str(exc))
    intact = f"the previous {path.name} is intact" if path.exists() else "no checkpoint of this run was written before"
    return UserError(f"{path}: could not write the checkpoint ({reason}); {intact}; free space or fix the folder, then resume")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; when the block ends well it replaces ``path`` in
    one rename, and a crash or ``kill -9`` at any moment leaves the old file or the new one, never half."""
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    except RuntimeError:  # torch.save's zip writer reports a failed write ("unexpected pos") without its errno
        raise write_error(path, OSError(errno.ENOSPC, "the write failed")) from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def save_atomic(state: dict, path: Path) -> None:
    """``torch.save`` to ``path`` through :func:`replacing`, fsynced before the rename."""
    with replacing(Path(path)) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def link_atomic(source: Path, target: Path) -> None:
    """Make ``target`` hold the same bytes as ``source`` (a hard link, else a copy), atomically."""
    with replacing(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())


def fsync_dir(folder: Path) -> None:
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


class Checkpoint:
    """A file given to ``-r``: a run's checkpoint, or a weights file (``ShardedCheckpoint`` in
    ``utils/sharded_checkpoint.py`` is the folder kind)."""

    is_sharded = False

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data
        self.is_run = data.get("format") == FORMAT
        self.version = data.get("version", 0) if self.is_run else None

    @property
    def config(self) -> dict | None:
        return self.data.get("config") if self.is_run else None

    @property
    def epoch(self) -> int | None:
        """The epoch it was written in, when it says (a weights file does not)."""
        progress = self.data if self.version == 1 else self.data.get("progress")
        epoch = progress.get("epoch") if isinstance(progress, dict) else None
        return epoch if isinstance(epoch, int) else None

    @property
    def global_step(self) -> int | None:
        """Optimizer steps done when it was written, when it says."""
        progress = self.data.get("progress")
        step = progress.get("global_step") if isinstance(progress, dict) else None
        return step if isinstance(step, int) else None

    @property
    def has_ema(self) -> bool:
        return isinstance(self.data.get("ema"), dict) and _is_state_dict(self.data["ema"].get("weights"))

    def weights(self, ema: bool = True) -> dict:
        """The model's state_dict, with the EMA weights in place of the raw ones when asked and present
        (a weights file from ``dcp_to_torch`` keeps them under ``ema.weights`` too)."""
        if not self.is_run and not _is_state_dict(self.data.get("model")):
            return self.data  # a bare state_dict
        weights = dict(self.data["model"])
        if ema and self.has_ema:
            weights.update(self.data["ema"]["weights"])
        return weights

    def rank_state(self, rank: int) -> dict:
        return self.data["ranks"][rank]

    def require_resumable(self) -> None:
        if not self.is_run:
            raise UserError(f"{self.path}: a weights file, not a run's checkpoint; it can be fine-tuned (-r FILE -c CONFIG) or tested, not resumed")
        if self.version != VERSION:
            raise UserError(
                f"{self.path}: checkpoint format version {self.version}, and this code resumes version {VERSION}; "
                f"fine-tune from it with -r FILE -c CONFIG, or evaluate it with test.py"
            )


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def load_checkpoint(path: str | Path) -> Any:
    """Read a checkpoint or weights file safely; missing, truncated or foreign files are a one-line :class:`UserError`."""
    path = Path(path)
    if path.is_dir():
        from utils.sharded_checkpoint import ShardedCheckpoint, is_snapshot

        if is_snapshot(path.resolve()):
            return ShardedCheckpoint(path)
        raise UserError(f"{path}: a folder, not a checkpoint; pass a .pth file (or a .dcp sharded checkpoint) from a run's checkpoints/ folder")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; pass an existing .pth file with -r")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 119": noise about a file we reject anyway
            warnings.simplefilter("ignore")
            data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - weights_only runs no code: any failure means the bytes are not a checkpoint
        # (garbage raises UnpicklingError mostly, but also IndexError, KeyError, UnicodeDecodeError, OSError ...)
        reason = first_line(exc, 160)
        raise UserError(f"{path}: not a readable checkpoint (truncated, corrupted or not saved by torch: {reason})") from None
    if not isinstance(data, dict) or not (data.get("format") == FORMAT or _is_state_dict(data) or _is_state_dict(data.get("model"))):
        raise UserError(f"{path}: not a checkpoint of this template (no '{FORMAT}' marker); pass a file from a run's checkpoints/ folder")
    checkpoint = Checkpoint(path, data)
    if checkpoint.is_run:
        version = checkpoint.version
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise UserError(f"{path}: a damaged checkpoint (format version {version!r}); pass a file from a run's checkpoints/ folder")
        if version > VERSION:
            raise UserError(f"{path}: checkpoint version {version} is newer than this code understands ({VERSION})")
        wrong = [key for key, ok in (("model", _is_state_dict(data.get("model"))), ("config", isinstance(data.get("config"), (dict, type(None)))),
                                     ("progress", version == 1 or isinstance(data.get("progress"), dict))) if not ok]  # fmt: skip
        if wrong:
            raise UserError(f"{path}: an incomplete or damaged checkpoint ({', '.join(wrong)} missing or not what it holds); use another file")
    return checkpoint


@dataclass
class LoadReport:
    """What :func:`load_weights` did, by weight name."""

    loaded: list[str]
    excluded: list[str]
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]

    def lines(self) -> list[str]:
        """One line each: loaded, excluded, missing (kept as initialised), unexpected (ignored)."""

        def names(keys: list[str]) -> str:
            return f"{len(keys)} {keys[:6]}{' ...' if len(keys) > 6 else ''}" if keys else "none"

        shapes = f"; different shapes {self.wrong_shape}" if self.wrong_shape else ""
        return [
            f"loaded {len(self.loaded)} tensors",
            f"excluded (trainer.load_exclude, kept as initialised): {names(self.excluded)}",
            f"missing (kept as initialised): {names(self.missing + self.wrong_shape)}{shapes}",
            f"unexpected (ignored): {names(self.unexpected)}",
        ]


def load_weights(model: nn.Module, state_dict: dict, strict: bool, source: str, exclude: tuple[str, ...] | list[str] = ()) -> LoadReport:
    """Load weights by name, except those under an ``exclude`` module prefix (they keep the model's
    own values, even where names and shapes match). Mismatches are named; ``strict`` makes them errors."""
    state_dict = clean_state_dict(state_dict)
    own = model.state_dict()

    def excluded(key: str) -> bool:
        return any(key == prefix or key.startswith(prefix + ".") for prefix in exclude)

    report = LoadReport(
        loaded=[k for k, v in state_dict.items() if k in own and own[k].shape == v.shape and not excluded(k)],
        excluded=[k for k in own if excluded(k)],
        missing=[k for k in own if k not in state_dict and not excluded(k)],
        unexpected=[k for k in state_dict if k not in own and not excluded(k)],
        wrong_shape=[k for k, v in state_dict.items() if k in own and own[k].shape != v.shape and not excluded(k)],
    )
    problems = [f"{what} {keys}" for what, keys in (("missing", report.missing), ("unexpected", report.unexpected), ("different shapes", report.wrong_shape)) if keys]
    if problems and strict:
        raise UserError(
            f"{source}: weights do not match the model: {'; '.join(problems)}; fix arch, set trainer.load_exclude to the "
            f"parts to start fresh, or trainer.load_strict=false to load what matches"
        )
    model.load_state_dict({k: state_dict[k] for k in report.loaded}, strict=False)
    return report


def prune_epoch_checkpoints(folder: Path, keep_last: int, suffix: str = ".pth") -> list[Path]:
    """Delete all but the ``keep_last`` newest ``epoch-N<suffix>``; ``last``/``best`` never go."""
    if keep_last <= 0:
        return []
    numbered = []
    for path in folder.glob(f"epoch-*{suffix}"):
        match = re.fullmatch(rf"epoch-(\d+){re.escape(suffix)}", path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    numbered.sort()
    doomed = [path for _, path in numbered[:-keep_last]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files that a killed writer left behind (never one of a live process)."""
    stale = []
    for path in Path(folder).glob(".*.tmp-*"):
        match = _TEMP.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            stale.append(path)
    return stale


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory a checkpoint belongs to (``<run_dir>/checkpoints/<file>``); links are not followed."""
    checkpoint = Path(os.path.abspath(checkpoint))
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
