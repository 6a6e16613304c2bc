"""Sharded checkpoints (FSDP): torch's distributed checkpoints (DCP), written and read safely.

On disk, ``checkpoints/last.dcp`` (and ``best.dcp``, ``epoch-N.dcp``) is a symbolic link to a
snapshot folder ``checkpoints/snapshots/<id>/`` holding:

- DCP's files (``.metadata`` and ``__<rank>_0.distcp``): the weights, the optimizer state and the
  EMA weights, each process writing its own shards (nothing is gathered to one process);
- ``meta.pt``: the parts every process shares (progress, monitor, scheduler, precision), the
  config and the format marker, written by rank 0;
- ``rank-<r>.pt``: each process's own parts (RNG states, data position, running epoch state).

A snapshot is complete before the link moves to it, and the link moves with one ``rename``, so a
kill at any moment leaves the previous checkpoint loadable; snapshots no link points to are
deleted. A snapshot can be read by any number of processes (DCP reshards), including one
process without torch.distributed (``test.py``, ``predict.py``, fine-tuning), and torch's own
``python -m torch.distributed.checkpoint.format_utils dcp_to_torch last.dcp out.pth`` makes one
weights file of it.

Reading is safe: DCP's stock reader unpickles ``.metadata`` and loads non-tensor values with
``weights_only=False``; here the metadata goes through an allow-list of DCP's own classes and
every value through ``torch.load(weights_only=True)``, so a snapshot cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata

from utils import distributed
from utils.checkpoint import fsync_dir, save_atomic, temporary_name
from utils.errors import UserError, first_line

SNAPSHOTS = "snapshots"
META = "meta.pt"

_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"), ("torch", "Size"), ("pathlib", "PosixPath")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused {module}.{name}: not part of a DCP checkpoint's metadata")


class SafeReader(FileSystemReader):
    """DCP's file reader with its metadata unpickled through an allow-list."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's planner with non-tensor values read by ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def load_into(state: dict, folder: Path) -> None:
    """Fill ``state`` (tensors or DTensors, in place) from the snapshot in ``folder``; any number of processes."""
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        try:
            dcp.load(state, storage_reader=SafeReader(folder), planner=SafeLoadPlanner())
        except BaseException as exc:  # DCP's CheckpointException is a BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            reason = first_line(exc, last=True)
            raise UserError(f"{folder}: the sharded checkpoint does not fit this run or is damaged ({reason})") from None


def tensor_shapes(folder: Path, prefix: str) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """The full shape and dtype of every tensor under ``prefix.`` in the snapshot, from its metadata."""
    try:
        metadata = SafeReader(folder).read_metadata()
    except Exception as exc:  # noqa: BLE001 - nothing was executed: the allow-list refused, or the file is damaged
        raise UserError(f"{folder}: unreadable sharded checkpoint metadata ({first_line(exc, 160)})") from None
    found = {}
    for key, item in metadata.state_dict_metadata.items():
        if key.startswith(prefix + ".") and isinstance(item, TensorStorageMetadata):
            found[key[len(prefix) + 1 :]] = (item.size, item.properties.dtype)
    return found


def full_tensors(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor under ``prefix.`` gathered whole in this process (``test.py``, ``predict.py``, fine-tuning)."""
    shapes = tensor_shapes(folder, prefix)
    parts = prefix.split(".")
    state: dict = {}
    node = state
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = {key: torch.empty(size, dtype=dtype) for key, (size, dtype) in shapes.items()}
    load_into(state, folder)
    return node[parts[-1]]


def read_plain(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - weights_only runs no code: any failure means a damaged file
        raise UserError(f"{path}: not a readable part of a sharded checkpoint ({first_line(exc, 160)})") from None


def save_snapshot(link: Path, sharded: dict, shared: dict, own: dict) -> None:
    """Write a snapshot and point ``link`` (e.g. ``last.dcp``) at it; a collective call.

    Every process writes its shards of ``sharded`` (DCP) and its ``own`` parts; rank 0 writes
    ``shared`` and then moves the link, after every process is done.
    """
    folder = link.parent / SNAPSHOTS / distributed.broadcast_object(os.urandom(6).hex())
    if distributed.is_main_process():
        folder.mkdir(parents=True)
    distributed.barrier()
    try:
        dcp.save(sharded, checkpoint_id=folder)
    except BaseException as exc:  # noqa: BLE001 - DCP wraps OSError in a BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise UserError(f"{link}: could not write the sharded checkpoint ({first_line(exc, 160, last=True)}); the previous one is intact") from None
    save_atomic(own, folder / f"rank-{distributed.rank()}.pt")
    if distributed.is_main_process():
        save_atomic(shared, folder / META)
    distributed.barrier()
    if distributed.is_main_process():
        point(link, folder)


def point(link: Path, folder: Path) -> None:
    """Make ``link`` a symbolic link to ``folder`` with one atomic rename, then drop unreferenced snapshots."""
    tmp = temporary_name(link)
    os.symlink(os.path.relpath(folder, link.parent), tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)
    remove_unreferenced(link.parent, keep=folder)


def remove_unreferenced(checkpoints: Path, keep: Path | None = None) -> None:
    """Delete snapshot folders no ``*.dcp`` link points to (left by a kill mid-save, or replaced)."""
    store = checkpoints / SNAPSHOTS
    if not store.is_dir():
        return
    used = {path.resolve() for path in checkpoints.glob("*.dcp") if path.is_symlink()}
    for folder in store.iterdir():
        if folder.resolve() not in used and folder.resolve() != (keep.resolve() if keep else None):
            shutil.rmtree(folder, ignore_errors=True)


def is_snapshot(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file() and (path / META).is_file()


class ShardedCheckpoint:
    """A snapshot given to ``-r`` (``last.dcp``): the same questions a file checkpoint answers."""

    is_run = True
    is_sharded = True

    def __init__(self, path: Path):
        from utils.checkpoint import FORMAT, VERSION

        self.path = path
        self.folder = path.resolve()
        self.data = read_plain(self.folder / META)
        if not isinstance(self.data, dict) or self.data.get("format") != FORMAT:
            raise UserError(f"{path}: not a checkpoint of this template (no '{FORMAT}' marker in {META})")
        self.version = self.data.get("version")
        if not isinstance(self.version, int) or self.version > VERSION:
            raise UserError(f"{path}: checkpoint version {self.version} is newer than this code understands ({VERSION})")

    @property
    def config(self) -> dict | None:
        return self.data.get("config")

    @property
    def epoch(self) -> int | None:
        progress = self.data.get("progress")
        return progress.get("epoch") if isinstance(progress, dict) else None

    @property
    def global_step(self) -> int | None:
        """Optimizer steps done when it was written, when it says."""
        progress = self.data.get("progress")
        step = progress.get("global_step") if isinstance(progress, dict) else None
        return step if isinstance(step, int) else None

    @property
    def has_ema(self) -> bool:
        return bool((self.data.get("sharded") or {}).get("ema"))

    def weights(self, ema: bool = True) -> dict:
        """The whole model's weights in this process (gathered from the shards)."""
        weights = full_tensors(self.folder, "model")
        if ema and self.has_ema:
            weights.update(full_tensors(self.folder, "ema.weights"))
        return weights

    def rank_state(self, rank: int) -> dict:
        return read_plain(self.folder / f"rank-{rank}.pt")

    def require_resumable(self) -> None:
        from utils.checkpoint import VERSION

        if self.version != VERSION:
            raise UserError(f"{self.path}: checkpoint format version {self.version}, and this code resumes version {VERSION}")
