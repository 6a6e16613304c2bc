"""``metrics.jsonl``: one JSON object per finished epoch, machine-readable.

Each row is appended with one ``write`` of a whole line. Reading is strict: every complete line
must be a JSON object with a whole ``epoch`` from 1; anything else is damage, said with the line
number (:class:`DamagedHistory`), never skipped. The one exception is a last line without its
newline, which is what a crash in the middle of an append leaves: it is not a row, and a resume
moves it, as written, to ``metrics.superseded.jsonl`` (with the rows after the checkpoint), so
nothing is ever dropped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from utils.files import open_own, write_atomic


class DamagedHistory(ValueError):
    """A line of a history file that is not what it must be (the message names the line)."""


class MetricsFile:
    """Appends epoch rows, one line each, written and flushed at once."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        """NaN/inf become null (JSON has neither); lists (a confusion matrix) are written as they are."""
        clean = {key: (None if isinstance(v, float) and not math.isfinite(v) else v) for key, v in row.items()}
        line = (json.dumps(clean) + "\n").encode()
        fd = open_own(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line)  # one write of the whole line (O_APPEND): a reader never sees half of it unless the disk fills
        finally:
            os.close(fd)

    @staticmethod
    def split(text: str) -> tuple[list[dict], str]:
        """(the rows, a torn last line or ""); a damaged complete line raises :class:`DamagedHistory`."""
        lines = text.split("\n")
        torn = lines.pop()  # "" when the text ends with a newline, as every whole row does
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DamagedHistory(f"line {number} is not JSON ({exc.msg})") from None
            except RecursionError:
                raise DamagedHistory(f"line {number} is nested too deeply") from None
            if not isinstance(row, dict):
                raise DamagedHistory(f"line {number} is a {type(row).__name__}, not a row of values")
            epoch = row.get("epoch")
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                raise DamagedHistory(f"line {number} has epoch {epoch!r}, not a whole number from 1")
            rows.append(row)
        return rows, torn

    @classmethod
    def read(cls, path: Path) -> list[dict]:
        """Every row (see the module docstring); a torn last line is not a row."""
        return cls.split(Path(path).read_text(encoding="utf-8"))[0]

    @classmethod
    def keep_epochs(cls, path: Path, last_epoch: int, superseded: Path) -> None:
        """Keep the rows of epochs up to ``last_epoch`` (a resume continues after it); later rows, and a
        torn last line, are moved to ``superseded``, never deleted. The file is replaced atomically."""
        if not path.exists():
            return
        rows, torn = cls.split(path.read_text(encoding="utf-8"))
        kept = [row for row in rows if row["epoch"] <= last_epoch]
        if len(kept) == len(rows) and not torn:
            return
        moved = [json.dumps(row) + "\n" for row in rows if row["epoch"] > last_epoch]
        if torn:
            moved.append(json.dumps({"torn_line": torn}) + "\n")  # kept as written, marked: not a row of an epoch
        with os.fdopen(open_own(superseded, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8") as handle:
            handle.writelines(moved)
        write_atomic(path, "".join(json.dumps(row) + "\n" for row in kept), "run directory", "make it writable")
