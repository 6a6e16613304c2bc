"""The worker side of a stream: what each DataLoader worker reads, shuffles and collates for
``BaseStreamLoader`` (``base/base_stream_loader.py``), and how workers are kept out of the way of
stop signals and shut down.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from dataflow.shard_index import INDEX_NAME
from dataflow.stream_plan import StreamPlan, mix
from utils.errors import UserError

_END = object()


class StreamPass(IterableDataset):
    """One pass's streams as the DataLoader workers read them: worker ``w`` reads stream ``w`` from
    its start, collates its batches and yields ``(stream, samples, batch)``; without workers the
    main process reads stream 0. A user error inside a worker comes back as ``(stream, -1, message)``,
    so the main process can report it in one line."""

    def __init__(self, read, accepts_start, shards, streams, starts, batch_size, collate_fn, buffer, seed):
        self.read, self.accepts_start, self.shards = read, accepts_start, shards
        self.streams, self.starts = streams, starts
        self.batch_size, self.collate_fn, self.buffer, self.seed = batch_size, collate_fn, buffer, seed

    def __iter__(self) -> Iterator[tuple[int, int, Any]]:
        info = get_worker_info()
        stream = info.id if info is not None else 0
        try:
            yield from self._batches(stream, in_worker=info is not None)
        except UserError as exc:
            yield stream, -1, str(exc)

    def _batches(self, stream: int, in_worker: bool) -> Iterator[tuple[int, int, Any]]:
        plan, start, size = self.streams[stream], self.starts[stream], self.batch_size
        if start >= plan.samples:
            return
        first = start // size
        if self.buffer:
            samples = _shuffled(self._samples(plan, 0), self.buffer, random.Random(mix(self.seed, stream)))
            for index in range(first):  # rebuild the buffer as the uninterrupted run left it
                with _batch_seed(mix(self.seed, stream, index), keep_global=not in_worker):
                    for _ in islice(samples, size):
                        pass
        else:
            samples = self._samples(plan, start)
        for index in range(first, plan.batches):
            with _batch_seed(mix(self.seed, stream, index), keep_global=not in_worker):
                items = list(islice(samples, min(size, plan.samples - index * size)))
                batch = self.collate_fn(items)
            yield stream, len(items), batch

    def _samples(self, plan: StreamPlan, skip: int) -> Iterator[Any]:
        """The stream's samples after its first ``skip``, checked against the index's counts."""
        for piece in plan.pieces:
            if skip >= piece.stop - piece.start:
                skip -= piece.stop - piece.start
                continue
            start, skip = piece.start + skip, 0
            path = self.shards.paths[piece.shard]
            source = iter(self.read(path, start=start) if self.accepts_start else islice(self.read(path), start, None))
            wanted, got = piece.stop - start, 0
            for sample in islice(source, wanted):
                got += 1
                yield sample
            to_end = piece.stop == self.shards.counts[piece.shard]
            if got < wanted or (to_end and next(source, _END) is not _END):
                raise UserError(
                    f"data_loader: {path} gave {'fewer' if got < wanted else 'more'} samples than its {INDEX_NAME} records "
                    f"({self.shards.counts[piece.shard]}); if read_shard changed what it yields, delete {path.parent / INDEX_NAME}"
                )
            close = getattr(source, "close", None)
            if close is not None:
                close()


def _shuffled(samples: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A shuffle buffer: each sample leaves at a random time within ``size`` samples."""
    buffer: list = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = sample
    rng.shuffle(buffer)
    yield from buffer


@contextmanager
def _batch_seed(seed: int, keep_global: bool):
    """Seed Python, NumPy and torch (CPU) for one batch's reading and collating; in the main process
    (``keep_global``) the training's own generators are put back afterwards."""
    cpu = torch.random.default_generator
    saved = (random.getstate(), np.random.get_state(), cpu.get_state()) if keep_global else None
    random.seed(seed)
    np.random.seed(seed % 2**32)
    cpu.manual_seed(seed)  # the CPU generator only: the training's CUDA streams stay untouched
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            cpu.set_state(saved[2])
