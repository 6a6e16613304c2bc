"""``metrics.jsonl``: one JSON object per finished epoch, machine-readable."""

from __future__ import annotations

import json
import math
from pathlib import Path

from utils.files import write_atomic


class MetricsFile:
    """Appends epoch rows, one line each, written and flushed at once."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        """NaN/inf become null (JSON has neither); lists (a confusion matrix) are written as they are."""
        clean = {key: (None if isinstance(v, float) and not math.isfinite(v) else v) for key, v in row.items()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")

    @staticmethod
    def read(path: Path) -> list[dict]:
        """Every complete row; a last line cut short by a crash is skipped, not an error."""
        rows = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "epoch" in row:
                rows.append(row)
        return rows

    @classmethod
    def keep_epochs(cls, path: Path, last_epoch: int, superseded: Path) -> None:
        """Keep the rows of epochs up to ``last_epoch`` (a resume continues after it); later rows are
        moved to ``superseded``, never deleted. The file is replaced atomically."""
        if not path.exists():
            return
        rows = cls.read(path)
        kept = [row for row in rows if row["epoch"] <= last_epoch]
        if len(kept) == len(rows):
            return
        with open(superseded, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows if row["epoch"] > last_epoch)
        write_atomic(path, "".join(json.dumps(row) + "\n" for row in kept), "run directory", "make it writable")
