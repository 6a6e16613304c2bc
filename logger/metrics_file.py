"""``metrics.jsonl``: one JSON object per finished epoch, machine-readable."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsFile:
    """Appends epoch rows; on resume drops rows after the resumed epoch, so no epoch appears twice."""

    def __init__(self, path: Path, resume_after_epoch: int | None = None):
        self.path = Path(path)
        if resume_after_epoch is not None and self.path.exists():
            rows = [row for row in self.read(self.path) if row["epoch"] <= resume_after_epoch]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
            tmp.replace(self.path)

    def append(self, row: dict) -> None:
        """One line per call, written and flushed at once (NaN/inf become null: JSON has neither)."""
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
