"""The snapshot store: torch's distributed checkpoints (DCP), every process writing its own shards.

On disk, ``checkpoints/last.dcp`` (and ``best.dcp``, ``epoch-N.dcp``) is a symbolic link to a
snapshot folder ``checkpoints/snapshots/<id>/`` holding:

- DCP's files (``.metadata`` and ``__<rank>_0.distcp``): the parts that offer
  ``dcp_state_dict()`` (the weights, the optimizer state and the EMA weights), each process
  writing its own shards (nothing is gathered to one process);
- ``meta.pt``: the header, the other shared parts (progress, monitor, scheduler, precision),
  which parts are in DCP, the checksum of every DCP file (``.metadata`` too), and the checksums
  of its own parts;
- ``rank-<r>.pt``: each process's own parts (RNG states, data position, running epoch state).

A snapshot is complete before the link moves to it, and the link moves with one ``rename``, so a
kill at any moment leaves the previous checkpoint loadable; snapshots no link points to are
deleted. A snapshot can be read by any number of processes (DCP reshards), including one
process without torch.distributed (``test.py``, ``predict.py``, fine-tuning), and torch's own
``python -m torch.distributed.checkpoint.format_utils dcp_to_torch last.dcp out.pth`` makes one
weights file of it.

Reading is safe: DCP's stock reader unpickles ``.metadata`` and loads non-tensor values with
``weights_only=False``; here the metadata goes through an allow-list of DCP's own classes, every
value through ``torch.load(weights_only=True)``, and the tensor sizes the metadata states are
checked against the bytes the files hold before anything is allocated. DCP is imported only here,
only by runs and commands that use a snapshot.
"""

from __future__ import annotations

import functools
import io
import math
import os
import pickle
import shutil
import zlib
from pathlib import Path
from typing import Any

import torch

from utils import distributed
from utils.checkpoints.files import epoch_checkpoints, save_atomic, unpacked_problem, verify_checksums, with_checksums
from utils.checkpoints.state import FORMAT, VERSION, Checkpoint, DcpStateful, Stateful, header
from utils.errors import UserError, first_line
from utils.files import fsync_dir, remove_stale_temporaries, temporary_name
from utils.nested import shape_problem

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


@functools.cache
def _dcp() -> tuple[type, type]:
    """DCP's reader and planner with safe reading (see the module docstring); imported on first use."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import StorageMeta

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

    return SafeReader, SafeLoadPlanner


def read_metadata(folder: Path) -> Any:
    """The snapshot's DCP metadata, unpickled through the allow-list, the sizes it states checked against the files."""
    reader, _ = _dcp()
    try:
        metadata = reader(folder).read_metadata()
    except Exception as exc:  # noqa: BLE001 - nothing was executed: the allow-list refused, or the file is damaged
        raise UserError(f"{folder}: unreadable sharded checkpoint metadata ({first_line(exc, 160)})") from None
    check_stated_sizes(metadata, folder)
    return metadata


def check_stated_sizes(metadata: Any, folder: Path) -> None:
    """A snapshot's metadata says how large each tensor is and where its bytes are; sizes the files
    cannot hold (a 4 TB tensor in a 1 MB snapshot) are a damaged snapshot, said before any allocation."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    files = {path.name: path.stat().st_size for path in folder.glob("*.distcp")}
    stored = sum(files.values())
    for key, item in getattr(metadata, "state_dict_metadata", {}).items():
        if isinstance(item, TensorStorageMetadata):
            size = math.prod(item.size) * item.properties.dtype.itemsize  # DCP stores tensors raw: their bytes are in the files
            if any(n < 0 for n in item.size) or size > stored + (1 << 20):
                raise UserError(f"{folder}: a damaged snapshot (its metadata claims {size:,} bytes for {key!r}, the files hold {stored:,}); use another checkpoint")
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        name = getattr(info, "relative_path", None)
        if name not in files or info.offset < 0 or info.length < 0 or info.offset + info.length > files[name]:
            raise UserError(f"{folder}: a damaged snapshot (its metadata points past the end of {name}); use another checkpoint")


def load_into(state: dict, folder: Path) -> None:
    """Fill ``state`` (tensors or DTensors, in place) from the snapshot in ``folder``; any number of processes."""
    import warnings

    import torch.distributed.checkpoint as dcp

    reader, planner = _dcp()
    read_metadata(folder)
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        try:
            dcp.load(state, storage_reader=reader(folder), planner=planner())
        except BaseException as exc:  # DCP's CheckpointException is a BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise UserError(f"{folder}: the sharded checkpoint does not fit this run or is damaged ({first_line(exc, last=True)})") from None


def full_tensors(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor under ``prefix.`` gathered whole in this process (``test.py``, ``predict.py``, fine-tuning)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = read_metadata(folder)
    shapes = {}
    for key, item in metadata.state_dict_metadata.items():
        if key.startswith(prefix + ".") and isinstance(item, TensorStorageMetadata):
            shapes[key[len(prefix) + 1 :]] = (item.size, item.properties.dtype)
    parts = prefix.split(".")
    state: dict = {}
    node = state
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = {key: torch.empty(size, dtype=dtype) for key, (size, dtype) in shapes.items()}
    load_into(state, folder)
    return node[parts[-1]]


def read_plain(path: Path) -> dict:
    unpacked = unpacked_problem(path)
    if unpacked:
        raise UserError(f"{path}: not a usable part of a sharded checkpoint ({unpacked})")
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - weights_only runs no code: any failure means a damaged file
        raise UserError(f"{path}: not a readable part of a sharded checkpoint ({first_line(exc, 160)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a part of a sharded checkpoint of this template")
    problem = shape_problem(data)
    if problem:
        raise UserError(f"{path}: not a usable part of a sharded checkpoint ({problem})")
    return data


def file_checksum(path: Path) -> str:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


class SnapshotStore:
    """Checkpoints as DCP snapshots (see the module docstring); every process takes part."""

    suffix = ".dcp"
    kind = "snapshots"
    asynchronous = False  # trainer.async_save is for files: DCP writes every rank's shards in place

    def wait(self) -> None:
        """Nothing in flight: a snapshot is written when ``save`` returns."""

    def __init__(self) -> None:
        self.folder: Path | None = None

    def attach(self, folder: Path | None) -> None:
        """Rank 0's checkpoint folder, known on every rank (each writes its shards there); a collective."""
        folder = distributed.broadcast_object(str(folder) if folder is not None else None)
        self.folder = Path(folder) if folder is not None else None

    def sweep(self) -> None:
        """Remove snapshots no link points to and temporaries a killed writer left (when training starts)."""
        if self.folder is not None and distributed.is_main_process():
            remove_stale_temporaries(self.folder)
            remove_unreferenced(self.folder)

    def path(self, name: str) -> Path | None:
        return self.folder / f"{name}{self.suffix}" if self.folder is not None else None

    def save(self, name: str, meta: dict, shared: dict[str, Stateful], own: dict[str, Stateful], mid_epoch: bool) -> None:
        """Write a snapshot and point ``name`` at it; a collective call."""
        import torch.distributed.checkpoint as dcp

        if self.folder is None:
            return
        link = self.path(name)
        folder = self.folder / SNAPSHOTS / distributed.broadcast_object(os.urandom(6).hex())
        if distributed.is_main_process():
            folder.mkdir(parents=True)
        distributed.barrier()
        in_dcp = {key: part for key, part in shared.items() if isinstance(part, DcpStateful)}
        try:
            dcp.save({key: part.dcp_state_dict() for key, part in in_dcp.items()}, checkpoint_id=folder)
        except BaseException as exc:  # noqa: BLE001 - DCP wraps OSError in a BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise UserError(f"{link}: could not write the sharded checkpoint ({first_line(exc, 160, last=True)}); the previous one is intact") from None
        mine = {path.name: file_checksum(path) for path in folder.glob(f"__{distributed.rank()}_*.distcp")}
        if distributed.is_main_process():
            mine[".metadata"] = file_checksum(folder / ".metadata")
        save_atomic(with_checksums({key: part.state_dict() for key, part in own.items()}), folder / f"rank-{distributed.rank()}.pt")
        files = {name: crc for sums in distributed.gather_objects(mine) for name, crc in sums.items()}
        if distributed.is_main_process():
            plain = {key: part.state_dict() for key, part in shared.items() if key not in in_dcp}
            state = {**header(meta, distributed.world_size(), mid_epoch), **plain, "dcp_parts": sorted(in_dcp), "files": files}
            save_atomic(with_checksums(state), folder / META)
        distributed.barrier()
        if distributed.is_main_process():
            fsync_dir(folder.parent)  # the new snapshot's folder entry is on disk before a link names it (power loss)
            point(link, folder)

    def link(self, source: str, target: str) -> None:
        """Checkpoint ``target`` is the snapshot ``source`` points to (rank 0)."""
        if self.folder is not None and distributed.is_main_process():
            point(self.path(target), self.path(source).resolve())

    def prune(self, keep_last: int) -> list[Path]:
        if self.folder is None or keep_last <= 0 or not distributed.is_main_process():
            return []
        doomed = epoch_checkpoints(self.folder, self.suffix)[:-keep_last]
        for path in doomed:
            path.unlink(missing_ok=True)
        remove_unreferenced(self.folder)
        return doomed

    def accepts(self, checkpoint: Checkpoint) -> None:
        if not checkpoint.is_sharded:
            raise UserError(
                f"{checkpoint.path}: a single-file checkpoint cannot be resumed with trainer.strategy=fsdp; resume it with ddp, "
                f"or start an fsdp run from its weights with -r {checkpoint.path} -c CONFIG"
            )


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


IN_SNAPSHOT = {"in_snapshot": True}
"""What a part without ``load_dcp_state_dict`` is given for a part the snapshot holds in DCP
(the EMA weights, in a run resumed with EMA off: it says they are dropped)."""


class SnapshotCheckpoint(Checkpoint):
    """A snapshot given to ``-r`` (``last.dcp``): the same questions a file checkpoint answers."""

    is_sharded = True

    def __init__(self, path: Path):
        self.path = path
        self.folder = path.resolve()
        self.data = read_plain(self.folder / META)
        if self.data.get("format") != FORMAT:
            raise UserError(f"{path}: not a checkpoint of this template (no '{FORMAT}' marker in {META})")
        version = self.data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
            raise UserError(f"{path}: checkpoint version {version} is newer than this code understands ({VERSION})")
        if version >= 3:
            verify_checksums(self.data, self.folder / META)
            self._verify_files()

    def _verify_files(self) -> None:
        files = self.data.get("files")
        if not isinstance(files, dict) or not files:
            raise UserError(f"{self.path}: a damaged snapshot (its list of DCP files is missing); use another checkpoint")
        for name, crc in files.items():
            path = self.folder / name
            if not path.is_file():
                raise UserError(f"{self.path}: a damaged snapshot ({name} is missing); use another checkpoint")
            if file_checksum(path) != crc:
                raise UserError(f"{self.path}: the part {name!r} does not match its checksum: the snapshot is damaged; use another checkpoint")

    @property
    def dcp_parts(self) -> list[str]:
        return list(self.data.get("dcp_parts") or [])

    @property
    def parts(self) -> set[str]:
        return set(self.data) | set(self.dcp_parts)

    @property
    def has_ema(self) -> bool:
        return "ema" in self.dcp_parts

    def weights(self, ema: bool = True) -> dict:
        """The whole model's weights in this process (gathered from the shards)."""
        weights = full_tensors(self.folder, "model")
        if ema and self.has_ema:
            weights.update(full_tensors(self.folder, "ema.weights"))
        return weights

    def load_part(self, name: str, part: Any) -> None:
        if name not in self.dcp_parts:
            part.load_state_dict(self.data[name])
        elif isinstance(part, DcpStateful):
            state = {name: part.dcp_state_dict()}
            load_into(state, self.folder)  # tensors filled in place, other values replaced
            part.load_dcp_state_dict(state[name])
        else:
            part.load_state_dict(IN_SNAPSHOT)

    def rank_state(self, rank: int) -> dict:
        path = self.folder / f"rank-{rank}.pt"
        if not path.is_file():
            raise UserError(f"{self.path}: a damaged snapshot (rank-{rank}.pt is missing); use another checkpoint")
        state = read_plain(path)
        if self.version >= 3:
            verify_checksums(state, path)
        return {key: value for key, value in state.items() if key != "checksums"}

    def require_resumable(self, versions: tuple[int, ...] = (VERSION,)) -> None:
        super().require_resumable(versions)

