"""The file store: one ``.pth`` per checkpoint, written by rank 0, read with ``weights_only=True``.

``checkpoints/last.pth`` holds the header, every shared part, ``ranks`` (each process's own parts,
gathered) and ``checksums``; it is written to a temporary file, fsynced and renamed into place,
so a kill at any moment leaves the previous file or the new one. ``best.pth`` and
``epoch-N.pth`` are hard links to the ``last.pth`` of their epoch.

Besides a run's checkpoints, ``-r`` takes a plain weights file for evaluation and fine-tuning: a
``state_dict``, or a dict with a ``"model"`` state_dict (what torch's ``dcp_to_torch`` makes of a
snapshot). Those carry no config, so ``-c`` must give one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from utils import distributed
from utils.checkpoints.background import BackgroundWriter, copied
from utils.checkpoints.checksum import checksum
from utils.checkpoints.state import FORMAT, VERSION, Checkpoint, Stateful, header
from utils.errors import UserError, first_line
from utils.files import remove_stale_temporaries, replacing
from utils.nested import shape_problem


def write_error(path: Path, exc: OSError) -> UserError:
    """A failed checkpoint write as one line that says what is intact."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    reason = "the disk is full or a file size limit was reached" if full else (exc.strerror or str(exc))
    intact = f"the previous {path.name} is intact" if path.exists() else "no checkpoint of this run was written before"
    return UserError(f"{path}: could not write the checkpoint ({reason}); {intact}; free space or fix the folder, then resume")


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """``utils.files.replacing`` with a checkpoint's error message (torch's zip writer reports a
    failed write as a RuntimeError without its errno)."""
    try:
        with replacing(path) as tmp:
            yield tmp
    except OSError as exc:
        raise write_error(path, exc) from None
    except RuntimeError:
        raise write_error(path, OSError(errno.ENOSPC, "the write failed")) from None


def save_atomic(state: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary, fsynced before the rename."""
    with _replacing(Path(path)) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def link_atomic(source: Path, target: Path) -> None:
    """Make ``target`` hold the same bytes as ``source`` (a hard link, else a copy), atomically."""
    with _replacing(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())


def with_checksums(state: dict) -> dict:
    return {**state, "checksums": {key: checksum(value) for key, value in state.items()}}


def verify_checksums(state: dict, path: Path) -> None:
    """Every part against its checksum; a difference is one line naming the part."""
    sums = state.get("checksums")
    if not isinstance(sums, dict):
        raise UserError(f"{path}: a damaged checkpoint (its checksums are missing); use another file (epoch-N, best)")
    for key, value in state.items():
        if key != "checksums" and sums.get(key) != checksum(value):
            raise UserError(f"{path}: the part {key!r} does not match its checksum: the file is damaged; use another file (epoch-N, best)")


class FileStore:
    """Checkpoints as files (see the module docstring); ``folder`` is set on rank 0 once the run directory exists."""

    suffix = ".pth"
    kind = "files"

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.asynchronous = False
        """Write in a background thread (``trainer.async_save``; ``utils/checkpoints/background.py``)."""
        self.writer = BackgroundWriter()

    def attach(self, folder: Path | None) -> None:
        """Where checkpoints go (None on other ranks)."""
        self.folder = folder

    def sweep(self) -> None:
        """Remove what a killed writer left half-written (when training starts, so a resume that fails
        before then changes nothing)."""
        if self.folder is not None:
            remove_stale_temporaries(self.folder)

    def path(self, name: str) -> Path | None:
        return self.folder / f"{name}{self.suffix}" if self.folder is not None else None

    def save(self, name: str, meta: dict, shared: dict[str, Stateful], own: dict[str, Stateful], mid_epoch: bool) -> None:
        """Write checkpoint ``name``; a collective call (every process contributes its own parts)."""
        state = {**header(meta, distributed.world_size(), mid_epoch), **{key: part.state_dict() for key, part in shared.items()}}
        state["ranks"] = distributed.gather_objects({key: part.state_dict() for key, part in own.items()})
        if self.folder is None:
            return
        path = self.path(name)
        if not self.asynchronous:
            save_atomic(with_checksums(state), path)
            return
        self.writer.wait()  # at most one write in flight (and its error, if it failed, said now)
        state = copied(state)  # what the loop pays for: the next step must not change what is written
        self.writer.submit(lambda: save_atomic(with_checksums(state), path))

    def wait(self) -> None:
        """Until the checkpoints handed to the background writer are on disk (a stop, the run's end)."""
        self.writer.wait()

    def link(self, source: str, target: str) -> None:
        """Checkpoint ``target`` holds what ``source`` holds (rank 0; after the write of ``source``)."""
        if self.folder is not None:
            source_path, target_path = self.path(source), self.path(target)
            self._then(lambda: link_atomic(source_path, target_path))

    def _then(self, job) -> None:
        """``job`` now, or after the write in flight when writing in the background."""
        if self.asynchronous:
            self.writer.submit(job)
        else:
            job()

    def prune(self, keep_last: int) -> list[Path]:
        """Delete all but the ``keep_last`` newest ``epoch-N`` checkpoints; ``last``/``best`` never go."""
        if self.folder is None or keep_last <= 0:
            return []
        self.wait()  # the epoch-N link just made must be there to count
        doomed = epoch_checkpoints(self.folder, self.suffix)[:-keep_last]
        for path in doomed:
            path.unlink(missing_ok=True)
        return doomed

    def accepts(self, checkpoint: Checkpoint) -> None:
        """Any checkpoint resumes into a file-store run (a snapshot's tensors are gathered)."""


def epoch_checkpoints(folder: Path, suffix: str) -> list[Path]:
    """``epoch-N<suffix>`` in ``folder``, oldest first."""
    numbered = []
    for path in folder.glob(f"epoch-*{suffix}"):
        match = re.fullmatch(rf"epoch-(\d+){re.escape(suffix)}", path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    return [path for _, path in sorted(numbered)]


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


class FileCheckpoint(Checkpoint):
    """A checkpoint read from one ``.pth`` file (with ``weights_only=True`` and every part's checksum
    verified)."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    @property
    def parts(self) -> set[str]:
        return set(self.data)

    @property
    def has_ema(self) -> bool:
        return isinstance(self.data.get("ema"), dict) and _is_state_dict(self.data["ema"].get("weights"))

    def weights(self, ema: bool = True) -> dict:
        if not self.is_run and not _is_state_dict(self.data.get("model")):
            return self.data  # a bare state_dict
        weights = dict(self.data["model"])
        if ema and self.has_ema:
            weights.update(self.data["ema"]["weights"])
        return weights

    def load_part(self, name: str, part: Any) -> None:
        part.load_state_dict(self.data[name])

    def rank_state(self, rank: int) -> dict:
        return self.data["ranks"][rank]


def unpacked_problem(path: Path) -> str | None:
    """Why ``path``'s records would unpack to more than the file holds, or None. torch writes its
    zip records stored, never compressed, but its reader inflates compressed ones: a file of 300 KB
    could become a tensor of 300 MB inside ``torch.load``, before anything could refuse it."""
    try:
        if not zipfile.is_zipfile(path):
            return None  # not torch's zip format: torch.load refuses it or reads it as it is
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None  # torch.load says what is wrong
    if any(record.compress_type != zipfile.ZIP_STORED for record in records):
        return "compressed records, which torch never writes"
    if sum(record.file_size for record in records) > path.stat().st_size:
        return "records larger than the file"
    return None


def read_file_checkpoint(path: Path) -> FileCheckpoint:
    """Read a checkpoint or weights file safely; missing, truncated, damaged or foreign files are one line."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; pass an existing .pth file with -r")
    unpacked = unpacked_problem(path)
    if unpacked:
        raise UserError(f"{path}: not a usable checkpoint ({unpacked})")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 119": noise about a file we reject anyway
            warnings.simplefilter("ignore")
            data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - weights_only runs no code: any failure means the bytes are not a checkpoint
        raise UserError(f"{path}: not a readable checkpoint (truncated, corrupted or not saved by torch: {first_line(exc, 160)})") from None
    problem = shape_problem(data)
    if problem:  # before anything walks it: a file can be built so that a walk never ends
        raise UserError(f"{path}: not a usable checkpoint ({problem})")
    if not isinstance(data, dict) or not (data.get("format") == FORMAT or _is_state_dict(data) or _is_state_dict(data.get("model"))):
        raise UserError(f"{path}: not a checkpoint of this template (no '{FORMAT}' marker); pass a file from a run's checkpoints/ folder")
    checkpoint = FileCheckpoint(path, data)
    if checkpoint.is_run:
        version = checkpoint.version
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise UserError(f"{path}: a damaged checkpoint (format version {version!r}); pass a file from a run's checkpoints/ folder")
        if version > VERSION:
            raise UserError(f"{path}: checkpoint version {version} is newer than this code understands ({VERSION})")
        if version >= 3 or "checksums" in data:  # a version changed to an older one does not switch the check off
            verify_checksums(data, path)
        wrong = [key for key, ok in (("model", _is_state_dict(data.get("model"))), ("config", isinstance(data.get("config"), (dict, type(None)))),
                                     ("progress", version == 1 or isinstance(data.get("progress"), dict))) if not ok]  # fmt: skip
        if wrong:
            raise UserError(
                f"{path}: an incomplete or damaged checkpoint ({', '.join(wrong)} missing or not what it holds); use another file"
            )
    return checkpoint
