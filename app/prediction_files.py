"""Prediction files: rows written as they come, per process, then merged in order into one file.

Every process writes its rows (JSON lines) to a hidden part file beside the output; rank 0 then
reads the parts in rank order and writes the final file through a temporary name and a rename,
so a file is never half-written and no process holds all predictions in memory. Because each
process predicts a contiguous run of whole batches of the one-process batching, the merged file
is the one a single process writes, byte for byte.

Formats, by the output's extension:

- ``.jsonl``: one object per row: ``index``, then ``path`` or ``line`` for unlabelled files,
  ``target`` (when the data has one), ``prediction``, ``label`` (the class name, when the data
  loader knows names) and ``output`` (probabilities or values, float32 precision);
- ``.csv``: the same columns, ``output`` spread over ``output_0``, ``output_1``, ...;
- ``.npz`` (NumPy) and ``.pt`` (``torch.load(..., weights_only=True)``): one array per column,
  ``output`` of shape ``(rows, k)``, names as lists or unicode arrays.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.run_dir import filesystem_error
from trainer.predictor import PredictionBatch
from utils.errors import UserError

FORMATS = (".jsonl", ".csv", ".npz", ".pt")


def check_output(path: Path, force: bool) -> None:
    """Refuse, before any work, an output that cannot be written as asked."""
    if path.is_dir():
        raise UserError(f"--out: {path} is a folder; name a file, e.g. {path / 'predictions.jsonl'}")
    if path.suffix not in FORMATS:
        raise UserError(f"--out: {path.name} has no known extension; use one of {', '.join(FORMATS)}")
    if path.exists() and not force:
        raise UserError(f"--out: {path} exists; pass --force to replace it, or choose another name")
    if not path.parent.is_dir():
        raise UserError(f"--out: the folder {path.parent} does not exist; create it first")


def _number(value: float) -> float:
    """A float32 value as the shortest decimal that reads back to it (0.1, not 0.10000000149011612)."""
    return float(str(np.float32(value)))


class RowFormatter:
    """PredictionBatches to JSON lines; see the module docstring for the keys."""

    def __init__(self, classes: list[str] | None = None, ids: list | None = None, id_key: str | None = None):
        self.classes, self.ids, self.id_key = classes, ids, id_key

    def lines(self, batch: PredictionBatch) -> Iterator[str]:
        outputs = batch.output.numpy()
        target = batch.target.tolist() if isinstance(batch.target, torch.Tensor) else batch.target
        classes = batch.prediction is not None and not batch.prediction.is_floating_point()
        predictions = batch.prediction.tolist() if batch.prediction is not None else None
        for row, index in enumerate(batch.index.tolist()):
            item: dict[str, Any] = {"index": index}
            if self.id_key is not None:
                item[self.id_key] = self.ids[index]
            if target is not None:
                item["target"] = _number(target[row]) if isinstance(target[row], float) else target[row]
            if predictions is not None:
                item["prediction"] = predictions[row] if classes else _number(predictions[row])
                if classes and self.classes is not None:
                    item["label"] = self.classes[predictions[row]]
            item["output"] = [_number(v) for v in outputs[row]]
            yield json.dumps(item)


class PartWriter:
    """This process's rows, in a hidden file beside ``out``; ``token`` is the same on every process."""

    def __init__(self, out: Path, rank: int, token: str):
        self.path = part_path(out, rank, token)
        try:
            self.handle = open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise filesystem_error("--out", out, exc, "choose a writable place for --out") from None
        self.rows = 0

    def write(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.handle.write(line + "\n")
            self.rows += 1

    def close(self) -> None:
        self.handle.close()


def part_path(out: Path, rank: int, token: str) -> Path:
    return out.with_name(f".{out.name}.part-{token}-{rank}")


def new_token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def merge(out: Path, world: int, token: str) -> int:
    """Rank 0: the parts, in rank order, as ``out`` (written atomically); returns the row count."""
    parts = [part_path(out, rank, token) for rank in range(world)]
    tmp = out.with_name(f".{out.name}.tmp-{token}")
    try:
        if out.suffix in (".npz", ".pt"):
            rows = _write_arrays(parts, tmp, torch_file=out.suffix == ".pt")
        else:
            rows = (_write_jsonl if out.suffix == ".jsonl" else _write_csv)(parts, tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise filesystem_error("--out", out, exc, "choose a writable place with free space for --out") from None
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


def _write_csv(parts: list[Path], tmp: Path) -> int:
    rows = 0
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        for row in _rows(parts):
            if rows == 0:
                writer.writerow([*(k for k in row if k != "output"), *(f"output_{i}" for i in range(len(row["output"])))])
            writer.writerow([*(v for k, v in row.items() if k != "output"), *row["output"]])
            rows += 1
    return rows


def _write_arrays(parts: list[Path], tmp: Path, torch_file: bool) -> int:
    """Columns through raw scratch files (one pass over the rows), then one array per column:
    ``.npz`` entries streamed into the zip, or a ``.pt`` dict of memory-mapped tensors."""
    layout: dict[str, tuple[np.dtype, int]] = {}
    scratch: dict[str, Any] = {}
    texts: dict[str, int] = {}
    rows = 0
    try:
        for row in _rows(parts):
            for key, value in row.items():
                if isinstance(value, str):
                    texts[key] = max(texts.get(key, 1), len(value))
                    continue
                array = np.asarray(value, dtype=np.float32 if isinstance(value, (float, list)) else np.int64)
                if key not in scratch:
                    layout[key] = (array.dtype, array.size)
                    scratch[key] = open(tmp.with_name(f"{tmp.name}.{key}"), "w+b")
                scratch[key].write(array.astype(layout[key][0]).tobytes())
            rows += 1
        for key, width in texts.items():
            scratch[key] = open(tmp.with_name(f"{tmp.name}.{key}"), "w+b")
            layout[key] = (np.dtype(f"<U{width}"), 1)
            for row in _rows(parts):
                scratch[key].write(np.asarray(row[key], dtype=layout[key][0]).tobytes())
        columns = {}
        for key, handle in scratch.items():
            handle.flush()
            dtype, size = layout[key]
            shape = (rows, size) if key == "output" else (rows,)
            columns[key] = np.memmap(handle.name, dtype=dtype, mode="r+", shape=shape) if rows else np.empty(shape, dtype)
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
