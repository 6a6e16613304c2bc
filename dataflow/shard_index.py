"""How many samples each shard holds, counted once and remembered in an ``index.json`` beside the shards.

Every process must know every shard's sample count before the first batch: the plan of a pass
(``dataflow/stream_plan.py``) is arithmetic on those counts, done alike on every rank. Counting means
reading a shard to its end, so the counts are cached per folder in ``index.json``, keyed by the
file's name, size and modification time (a changed file is counted again) and by the reader's
name (another reader may yield other samples). Each entry also keeps a hash of the file's bytes
(taken when it is counted) and of its first and last 64 KiB (checked at every start, so a file
rewritten with the same size and time is noticed too): a mid-epoch resume compares contents,
not names and counts. The file is replaced atomically (processes that start together each
write the same content); where the folder is not writable, counting happens in memory at every
start instead.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from logger.logger import get_logger
from utils.errors import UserError
from utils.files import write_atomic

ShardSpec = str | Path | Sequence[str | Path]
INDEX_NAME = "index.json"
INDEX_FORMAT = 2


def shard_counts(paths: Sequence[Path], count: Callable[[Path], int], reader: str) -> list[tuple[int, str]]:
    """The sample count and content hash of each of ``paths`` (in their order), from or into each folder's index."""
    found: dict[Path, tuple[int, str]] = {}
    folders: dict[Path, list[Path]] = {}
    for path in paths:
        folders.setdefault(path.parent, []).append(path)
    for folder, members in folders.items():
        found.update(_folder_counts(folder, members, count, reader))
    return [found[path] for path in paths]


def _folder_counts(folder: Path, paths: list[Path], count: Callable[[Path], int], reader: str) -> dict[Path, tuple[int, str]]:
    index_path = folder / INDEX_NAME
    entries = _read_index(index_path, reader)
    found, changed = {}, False
    for path in paths:
        stat = path.stat()
        ends = _hash(path, ends_only=True)
        entry = entries.get(path.name)
        if entry and (entry.get("size"), entry.get("mtime_ns"), entry.get("ends")) == (stat.st_size, stat.st_mtime_ns, ends) and entry.get("sha256"):
            found[path] = (int(entry["samples"]), entry["sha256"])
            continue
        found[path] = (int(count(path)), _hash(path))
        entries[path.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "samples": found[path][0], "sha256": found[path][1], "ends": ends}
        changed = True
    if changed:
        _write_index(index_path, {"format": INDEX_FORMAT, "reader": reader, "shards": entries})
    return found


def _hash(path: Path, ends_only: bool = False) -> str:
    """SHA-256 of a file's bytes (``ends_only``: of its first and last 64 KiB, cheap enough for every start)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if ends_only:
            digest.update(handle.read(1 << 16))
            handle.seek(max(0, path.stat().st_size - (1 << 16)))
            digest.update(handle.read(1 << 16))
        else:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:32]


def _read_index(path: Path, reader: str) -> dict:
    """The index's entries, or none if it is missing, unreadable or written for another reader."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or data.get("reader") != reader:
        return {}
    shards = data.get("shards")
    return dict(shards) if isinstance(shards, dict) else {}


def _write_index(path: Path, data: dict) -> None:
    """Replace ``path`` atomically; a folder that is not writable keeps no index (a note at debug level)."""
    try:
        write_atomic(path, json.dumps(data, indent=1, sort_keys=True), "data_loader", "")
    except UserError as exc:
        get_logger().debug("shard index not written (%s): counts are kept in memory", exc)


def list_shards(spec: ShardSpec) -> list[Path]:
    """The shard files ``spec`` names (a folder, a glob pattern, or a list), sorted by path."""
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if path.is_dir():
            found = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != INDEX_NAME]
        elif any(char in str(spec) for char in "*?["):
            found = [Path(p) for p in glob.glob(str(spec)) if Path(p).is_file() and Path(p).name != INDEX_NAME]
        else:
            found = [path] if path.is_file() else []
        if not found:
            raise UserError(f"data_loader: no shard files in {spec}; give a folder of shards, a glob pattern or a list of files")
        return sorted(found, key=str)
    found = [Path(p) for p in spec]
    missing = [str(p) for p in found if not p.is_file()]
    if missing or not found:
        raise UserError(f"data_loader: shard file {missing[0] if missing else '(none)'} not found; give existing shard files")
    return sorted(found, key=str)


def hold_out(paths: list[Path], count: int, seed: int, explicit: bool) -> tuple[list[Path], list[Path]]:
    """``count`` of ``paths`` for validation, chosen by ``seed``; the rest for training."""
    if explicit:
        raise UserError("data_loader.args.validation_split: give validation_shards or validation_split, not both")
    if not 0 < count < len(paths):
        raise UserError(f"data_loader.args.validation_split: {count} shards of {len(paths)} leaves no training or no validation shard")
    held = set(torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:count].tolist())
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


def accepts_start(read: Callable) -> bool:
    """Whether the reader takes ``start=`` (skips to a sample itself) rather than being read and discarded up to it."""
    try:
        return "start" in inspect.signature(read).parameters
    except (TypeError, ValueError):
        return False


def reader_name(read: Callable) -> str:
    """What the index remembers about the reader: another reader may yield other samples."""
    owner = getattr(read, "__self__", None)
    if owner is not None:
        return f"{type(owner).__module__}.{type(owner).__qualname__}.{read.__name__}"
    return f"{getattr(read, '__module__', '?')}.{getattr(read, '__qualname__', type(read).__name__)}"


def check_count(key: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"data_loader.args.{key}: must be an integer of at least {least}, got {value!r}")
