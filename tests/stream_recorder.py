"""Test doubles for tests/test_stream.py: which samples did training actually see?

``IdDigitsStreamLoader`` is ``DigitsStreamLoader`` whose batches also carry each sample's id,
``(images, ids, labels)``; ``RecordingDigitsCNN`` is ``SignalingDigitsCNN`` (it can signal its own
process at a chosen batch) that, in training mode, appends each batch's ids as one line to
``$RECORD_IDS.rank<RANK>``. The pre-flight check's batch is the first line of every process.
Without ``RECORD_IDS`` nothing is written; the model computes exactly what ``DigitsCNN`` does.
"""

import os
from pathlib import Path

import numpy as np
from fault_injection import SignalingDigitsCNN

from data_loader import DigitsStreamLoader


class IdDigitsStreamLoader(DigitsStreamLoader):
    def read_shard(self, path: Path, start: int = 0):
        with np.load(path) as shard:
            ids = shard["ids"][start:].tolist()
        for (image, label), sample_id in zip(super().read_shard(path, start), ids):
            yield image, sample_id, label


class RecordingDigitsCNN(SignalingDigitsCNN):
    def forward(self, x, ids=None):
        prefix = os.environ.get("RECORD_IDS")
        if self.training and prefix and ids is not None:
            with open(f"{prefix}.rank{os.environ.get('RANK', '0')}", "a") as file:
                file.write(" ".join(map(str, ids.tolist())) + "\n")
        return super().forward(x)


def recorded(prefix: Path, rank: int = 0) -> list[list[int]]:
    """The id lines one process recorded, pre-flight batch first."""
    path = Path(f"{prefix}.rank{rank}")
    return [[int(i) for i in line.split()] for line in path.read_text().splitlines()]
