"""Prediction files: rows written as they come, per process, then merged in order into one file.

Every process writes its rows (JSON lines) to a hidden temporary part beside the output; rank 0
then reads the parts in rank order and writes the final file through a temporary and one link or
rename, so a file is never half-written and no process holds all predictions in memory. Because
each process predicts a contiguous run of whole batches of the one-process batching, the merged
file is the one a single process writes, byte for byte. The output is locked first
(``utils/files.py``: :class:`~utils.files.OutputLock`): a second ``predict.py`` to the same file
is one line, an existing file needs ``--force``, and a part or temporary left by a killed run is
swept by the next lock of the same name; on any other exit they are removed at once.

Columns, by the output's extension:

- ``.jsonl``: one object per row: ``index``, then ``path`` or ``line`` for unlabelled files,
  ``target`` (when the data has one; a dict or tuple target as ``target.<field>``, one per
  field), then the fields (``trainer/predictor.py``): for a tensor output ``prediction``,
  ``label`` (the class name, when the data loader knows names) and ``output`` (probabilities or
  values, float32 precision); for a dict, tuple or namedtuple output, one field per key; each
  row's value a number or a nested list in the field's own shape (a ``(C, H, W)`` row stays 3-D);
- ``.csv``: the same columns, flattened: a field with several values per row spread over
  ``name_0``, ``name_1``, ... (row-major);
- ``.npz`` (NumPy) and ``.pt`` (``torch.load(..., weights_only=True)``): one array per column of
  shape ``(rows, *the field's shape)`` (a ``(N, H, W)`` mask stays ``(N, H, W)``), names as lists
  or unicode arrays.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.predictor import PredictionBatch
from utils.errors import UserError
from utils.files import OutputLock, file_error, temporary_name

FORMATS = (".jsonl", ".csv", ".npz", ".pt")


def lock_output(path: Path, force: bool) -> OutputLock:
    """Refuse, before any work, an output that cannot be written as asked; else lock it."""
    try:
        folder = path.is_dir()
    except OSError as exc:
        raise file_error("--out", path, exc, "pass --out with a shorter name in a writable place") from None
    if folder:
        raise UserError(f"--out: {path} is a folder; name a file, e.g. {path / 'predictions.jsonl'}")
    if path.suffix not in FORMATS:
        raise UserError(f"--out: {path.name} has no known extension; use one of {', '.join(FORMATS)}")
    output = OutputLock(path, "--out", force)
    output.acquire()
    return output


def _number(value: float) -> float:
    """A float32 value as the shortest decimal that reads back to it (0.1, not 0.10000000149011612)."""
    return float(str(np.float32(value)))


def _plain(value: Any) -> Any:
    """A row's value (from ``tolist``) for JSON: floats at float32 precision, lists kept nested."""
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


class RowFormatter:
    """PredictionBatches to JSON lines; see the module docstring for the keys."""

    def __init__(self, classes: list[str] | None = None, ids: list | None = None, id_key: str | None = None):
        self.classes, self.ids, self.id_key = classes, ids, id_key

    def lines(self, batch: PredictionBatch) -> Iterator[str]:
        targets = {name: values.tolist() if isinstance(values, torch.Tensor) else values for name, values in batch.target.items()}
        columns = {name: values.tolist() for name, values in batch.fields.items()}
        label = batch.classes and self.classes is not None
        for row, index in enumerate(batch.index.tolist()):
            item: dict[str, Any] = {"index": index}
            if self.id_key is not None:
                item[self.id_key] = self.ids[index]
            for name, values in targets.items():
                item[name] = _plain(values[row])
            for name, values in columns.items():
                item[name] = values[row] if batch.classes and name == "prediction" else _plain(values[row])
                if label and name == "prediction":
                    item["label"] = self.classes[values[row]]
            yield json.dumps(item)


class PartWriter:
    """This process's rows, in a hidden temporary beside ``out`` (swept by the next lock if the
    process is killed); :meth:`discard` removes it."""

    def __init__(self, out: Path):
        self.path = temporary_name(out)
        self.out = out
        try:
            self.handle = open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise file_error("--out", out, exc, "choose a writable place for --out") from None
        self.rows = 0

    def write(self, lines: Iterable[str]) -> None:
        try:
            for line in lines:
                self.handle.write(line + "\n")
                self.rows += 1
        except OSError as exc:
            raise file_error("--out", self.out, exc, "choose a place with free space for --out") from None

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError as exc:
            raise file_error("--out", self.out, exc, "choose a place with free space for --out") from None

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        self.path.unlink(missing_ok=True)


def merge(output: OutputLock, parts: list[Path]) -> int:
    """Rank 0: the parts, in rank order, as the locked output; returns the row count."""
    out = output.path
    tmp = temporary_name(out)
    try:
        if out.suffix in (".npz", ".pt"):
            rows = _write_arrays(parts, tmp, torch_file=out.suffix == ".pt")
        else:
            rows = (_write_jsonl if out.suffix == ".jsonl" else _write_csv)(parts, tmp)
        output.publish(tmp)
    except OSError as exc:
        raise file_error("--out", out, exc, "choose a writable place with free space for --out") from None
    finally:
        tmp.unlink(missing_ok=True)
        for part in parts:
            part.unlink(missing_ok=True)
    return rows


def _rows(parts: list[Path]) -> Iterator[dict]:
    for part in parts:
        with open(part, encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)


def _write_jsonl(parts: list[Path], tmp: Path) -> int:
    rows = 0
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                for line in handle:
                    out.write(line)
                    rows += 1
    return rows


def _flat(value: Any) -> list:
    return [leaf for item in value for leaf in _flat(item)] if isinstance(value, list) else [value]


def _csv_columns(row: dict) -> list[str]:
    names = []
    for key, value in row.items():
        names += [f"{key}_{i}" for i in range(len(_flat(value)))] if isinstance(value, list) else [key]
    return names


def _write_csv(parts: list[Path], tmp: Path) -> int:
    rows = 0
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        for row in _rows(parts):
            if rows == 0:
                writer.writerow(_csv_columns(row))
            writer.writerow([leaf for value in row.values() for leaf in _flat(value)])
            rows += 1
    return rows


def _write_arrays(parts: list[Path], tmp: Path, torch_file: bool) -> int:
    """Columns through raw scratch files (one pass over the rows), then one array per column:
    ``.npz`` entries streamed into the zip, or a ``.pt`` dict of memory-mapped tensors."""
    layout: dict[str, tuple[np.dtype, tuple]] = {}
    scratch: dict[str, Any] = {}
    texts: dict[str, int] = {}
    rows = 0
    try:
        for row in _rows(parts):
            for key, value in row.items():
                if isinstance(value, str):
                    texts[key] = max(texts.get(key, 1), len(value))
                    continue
                array = np.asarray(value, dtype=_dtype_of(value))
                if key not in scratch:
                    layout[key] = (array.dtype, array.shape)
                    scratch[key] = open(tmp.with_name(f"{tmp.name}.{len(scratch)}"), "w+b")
                elif array.shape != layout[key][1]:
                    raise UserError(
                        f"--out: the field {key!r} has rows of shapes {layout[key][1]} and {array.shape}; "
                        f"one array needs one shape: write .jsonl instead, or choose fields with --fields"
                    )
                scratch[key].write(array.astype(layout[key][0]).tobytes())
            rows += 1
        for key, width in texts.items():
            scratch[key] = open(tmp.with_name(f"{tmp.name}.{len(scratch)}"), "w+b")
            layout[key] = (np.dtype(f"<U{width}"), ())
            for row in _rows(parts):
                scratch[key].write(np.asarray(row[key], dtype=layout[key][0]).tobytes())
        columns = {}
        for key, handle in scratch.items():
            handle.flush()
            dtype, shape = layout[key]
            shape = (rows, *shape)
            columns[key] = np.memmap(handle.name, dtype=dtype, mode="r+", shape=shape) if rows and all(shape) else np.empty(shape, dtype)
        if torch_file:  # tensors over the memory-mapped scratch files: torch.save reads them page by page
            torch.save({k: v.tolist() if v.dtype.kind == "U" else torch.from_numpy(v) for k, v in columns.items()}, tmp)
        else:
            with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
                for key, array in columns.items():
                    with archive.open(f"{key}.npy", "w", force_zip64=True) as entry:
                        np.lib.format.write_array(entry, np.asarray(array), allow_pickle=False)
    finally:
        for handle in scratch.values():
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
    return rows


def _dtype_of(value: Any) -> type:
    leaves = _flat(value) if isinstance(value, list) else [value]
    if any(isinstance(leaf, float) for leaf in leaves):
        return np.float32
    if leaves and all(isinstance(leaf, bool) for leaf in leaves):
        return np.bool_
    return np.int64


def read_predictions(path: Path) -> list[dict] | dict:
    """A prediction file back: JSON lines and CSV as rows, arrays as a dict (for tests and notebooks)."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(path.read_text())))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    return torch.load(path, weights_only=True)

