"""BaseStreamLoader: data that does not fit in memory, read shard by shard, with exact mid-epoch resume
on any number of processes and DataLoader workers.

You say how one shard file becomes samples (``read_shard(self, path)``, or ``reader=``); the
template owns the rest:

- **order**: pass ``p`` reads the shards in an order shuffled by ``(seed, p)``; an optional
  shuffle buffer per stream is seeded by ``(seed, p, rank, stream)``;
- **assignment**: each rank reads a contiguous share of the pass, each worker (a *stream*) a
  block of whole batches of it, collated in the worker (``dataflow/stream_plan.py``);
- **equal epochs under DDP**: every rank takes the same number of batches; what that leaves
  out (the tail: fewer samples than processes, or the partial batches with ``drop_last``) is
  logged, and no sample is read twice in a pass;
- **position**: a worker tags each batch with its stream; the main process hands batches to the
  Trainer in a fixed round-robin order and counts, per stream, the samples of the batches it
  handed over (not those prefetched). ``state_dict()`` saves those counts; after
  ``load_state_dict(state, mid_epoch=True)`` each stream starts where it stopped, so the resumed
  run sees exactly the batches the uninterrupted one would have;
- **randomness in read_shard or collate_fn** (augmentation) is seeded per batch by
  ``(seed, pass, rank, stream, batch)``, so it repeats on resume too (in the main process the
  global generators are put back after each batch);
- **sample counts** come from an ``index.json`` beside the shards (``dataflow/shard_index.py``).

Evaluation loaders (``training=False``, and ``split_validation()``) read the shards in sorted
order, each rank its contiguous share, nothing padded or dropped; ``prediction_batches`` gives a
rank's share in order for ``predict.py``. See docs/streaming.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing.util  # noqa: F401 - its exit hook must be registered before ours (see _shut_down_live_iterators)
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import default_collate

from base.base_data_loader import check_loader_counts
from dataflow.epochs import epoch_length, prediction_share
from dataflow.shard_index import ShardSpec, accepts_start, check_count, hold_out, list_shards, reader_name, shard_counts
from dataflow.stream_plan import (
    RankPlan,
    StreamPlan,
    batches_per_rank,
    evaluation_plan,
    mix,
    next_stream,
    shard_order,
    share_plan,
    taken_after,
    training_plan,
)
from dataflow.stream_workers import StreamPass
from dataflow.workers import leave_stops_to_the_main_process, shut_down, track
from logger.logger import get_logger
from utils import distributed
from utils.errors import UserError


@dataclass
class Shards:
    """The shard files (sorted) and their sample counts: what ``len(loader.dataset)`` counts."""

    paths: list[Path]
    counts: list[int]
    contents: list[str]  # a hash of each shard's bytes (``dataflow/shard_index.py``)

    def __len__(self) -> int:
        return sum(self.counts)


@dataclass
class _Position:
    """Samples each stream of pass ``pass_index`` has handed to the Trainer."""

    pass_index: int
    samples: list[int]


class BaseStreamLoader:
    """Base class for sharded streams; subclasses define ``read_shard`` and call ``super().__init__``.

    Args:
        shards: a folder (every file in it but hidden ones and ``index.json``), a glob pattern, or a
            list of files. Shards are numbered in sorted path order.
        batch_size: samples per batch **per process**.
        shuffle: shuffle the shard order each pass (and use the shuffle buffer).
        num_workers: DataLoader worker processes; each reads and collates its own stream.
        training: False builds an evaluation loader: sorted order, no shuffle, nothing dropped.
        shuffle_buffer: samples held in each stream's seeded shuffle buffer (0: none). A resume
            re-reads the stream's part of the pass up to its position to rebuild the buffer.
        drop_last: each rank drops its partial last batch (then every batch is full).
        validation_shards: shards of the validation loader (``split_validation()``).
        validation_split: or hold out this many of ``shards`` for validation, chosen by ``split_seed``.
        split_seed: seed of that choice; the run seed never touches it.
        collate_fn: how a list of samples becomes a batch (runs in the worker).
        reader: ``reader(path)`` yielding a shard's samples, instead of a ``read_shard`` method.
        counter: ``counter(path)`` giving a shard's sample count faster than reading it.
        shard: ``(rank, world_size)`` to read as, instead of torch.distributed's (tests, tools).
    """

    def __init__(
        self,
        shards: ShardSpec,
        batch_size: int,
        shuffle: bool = True,
        num_workers: int = 0,
        training: bool = True,
        shuffle_buffer: int = 0,
        drop_last: bool = False,
        validation_shards: ShardSpec | None = None,
        validation_split: int = 0,
        split_seed: int = 0,
        collate_fn: Callable = default_collate,
        reader: Callable[..., Any] | None = None,
        counter: Callable[[Path], int] | None = None,
        shard: tuple[int, int] | None = None,
    ):
        check_loader_counts(batch_size, num_workers)
        check_count("shuffle_buffer", shuffle_buffer, 0)
        check_count("validation_split", validation_split, 0)
        if reader is None and type(self).read_shard is BaseStreamLoader.read_shard:
            raise UserError(f"data_loader.type: {type(self).__name__} must define read_shard(self, path), or be given reader=")
        self.batch_size, self.num_workers, self.training = batch_size, num_workers, training
        self.shuffle, self.drop_last = shuffle and training, drop_last and training
        self.shuffle_buffer = shuffle_buffer if self.shuffle else 0
        self.collate_fn = collate_fn
        self._read = reader or self.read_shard
        self._count = counter or self.count_samples
        self._shard_arg = shard
        self.rank, self.world = shard if shard is not None else (distributed.rank(), distributed.world_size())
        if not 0 <= self.rank < self.world:
            raise UserError(f"data_loader: shard {shard!r} is not (rank, world_size) with 0 <= rank < world_size")
        paths = list_shards(shards)
        valid = list_shards(validation_shards) if validation_shards is not None else []
        if validation_split:
            paths, valid = hold_out(paths, validation_split, split_seed, bool(valid))
        self.valid_shards = valid if training else []
        indexed = shard_counts(paths, self._count, reader_name(self._read))
        self.dataset = Shards(paths, [samples for samples, _ in indexed], [content for _, content in indexed])
        self.seed = 0
        self.batches_per_epoch = 0
        self._len_epoch: int | None = None
        self._overfit = 0
        self._position: _Position | None = None
        self._restored: _Position | None = None

    # -- what a subclass supplies -----------------------------------------------------------------

    def read_shard(self, path: Path) -> Iterator[Any]:
        """The samples of one shard file, in order. Accept a ``start`` argument to skip to a sample cheaply."""
        raise NotImplementedError

    def count_samples(self, path: Path) -> int:
        """A shard's sample count (for ``index.json``): by reading it, unless a subclass knows a faster way."""
        return sum(1 for _ in self._read(path))

    # -- sizes ------------------------------------------------------------------------------------

    @property
    def base_dataset(self) -> Shards:
        return self.dataset

    @property
    def num_samples(self) -> int:
        """Samples in the shards (training: per pass, before the tail is left out)."""
        return len(self.dataset)

    @property
    def streams(self) -> int:
        """Streams per process: one per worker, or one read in the main process."""
        return max(1, self.num_workers)

    def batches_per_pass(self) -> int:
        if not self.training:
            return self._evaluation_plan().batches
        return batches_per_rank(self.num_samples, self.world, self.batch_size, self.drop_last)

    def __len__(self) -> int:
        return self.batches_per_pass()

    # -- the epoch protocol (dataflow/epochs.py) ---------------------------------------------------------

    def set_seed(self, seed: int) -> None:
        """The run seed: pass ``p``'s shard order depends on ``(seed, p)`` alone."""
        self.seed = seed

    def plan_epochs(self, device: torch.device, len_epoch: int | None = None, overfit_batches: int = 0, limit_batches: int = 0) -> None:
        """Say what an epoch is: one pass, ``len_epoch`` batches of endless passes, or the first
        ``overfit_batches`` batches of an unshuffled pass; at most ``limit_batches``."""
        self._len_epoch, self._overfit = len_epoch, overfit_batches
        per_pass = self.batches_per_pass()
        if not self.training:
            self.batches_per_epoch = min(per_pass, limit_batches) if limit_batches else per_pass
            return
        if per_pass < 1:
            raise UserError(
                f"data_loader.args.batch_size: {self.num_samples} training samples over {self.world} process(es) give no batch of "
                f"{self.batch_size} per process; lower batch_size, turn off drop_last, or use fewer processes"
            )
        self.batches_per_epoch = epoch_length(per_pass, len_epoch, overfit_batches, limit_batches)
        plan = self._training_plan(0)
        get_logger().info(
            "stream: %s training samples in %d shards; per process %d batches of %d per pass from %d stream(s); "
            "%d sample(s) per pass left out at the tail so that every process takes the same number of batches",
            f"{self.num_samples:,}",
            len(self.dataset.paths),
            per_pass,
            self.batch_size,
            self.streams,
            plan.tail,
        )

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """Batches ``start..batches_per_epoch`` of ``epoch`` (1-based) on this rank. ``start`` 0 is
        a fresh epoch; a later start continues the position restored by ``load_state_dict``."""
        restored, self._restored = self._restored, None
        if not self.training:
            return islice(self, start, self.batches_per_epoch)
        return self._training_batches(epoch, start, restored if start else None)

    def state_dict(self) -> dict:
        """The streams' positions in the current pass, and what a mid-epoch resume must match."""
        position = self._position or _Position(0, [0] * self.streams)
        return {
            "batch_size": self.batch_size,
            "world_size": self.world,
            "num_workers": self.num_workers,
            "shuffle_buffer": self.shuffle_buffer,
            "drop_last": self.drop_last,
            "data": self._digest(),
            "pass": position.pass_index,
            "positions": list(position.samples),
        }

    def load_state_dict(self, state: dict, mid_epoch: bool) -> None:
        """Restore the streams' positions (mid-epoch); an epoch-end checkpoint resumes with any set-up."""
        self._restored = None
        if not mid_epoch:
            return
        if not isinstance(state, dict) or "positions" not in state:
            raise UserError(
                "data_loader: the checkpoint was written mid-epoch by another kind of data loader; "
                "resume with the run's data loader, or from an epoch-end checkpoint (epoch-N.pth)"
            )
        self._check_same(state)
        self._restored = _Position(int(state["pass"]), [int(n) for n in state["positions"]])

    def split_validation(self) -> BaseStreamLoader | None:
        """The validation loader over the validation shards (evaluation order), or None without them."""
        if not self.valid_shards:
            return None
        return BaseStreamLoader(
            self.valid_shards,
            self.batch_size,
            num_workers=self.num_workers,
            training=False,
            collate_fn=self.collate_fn,
            reader=self._read,
            counter=self._count,
            shard=self._shard_arg,
        )

    def __iter__(self) -> Iterator[Any]:
        """One pass of plain batches: an evaluation loader's share, or a training loader's first pass."""
        if self.training:
            plan, seed = self._training_plan(0), self._pass_seed(0)
            return (batch for _, _, batch in self._ordered(plan, [0] * self.streams, seed, self.shuffle_buffer, self.num_workers))
        return (
            batch for _, _, batch in self._ordered(self._evaluation_plan(), [0] * self.streams, self._pass_seed(0), 0, self.num_workers)
        )

    def prediction_batches(self, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, Any]]:
        """``(sample indices, batch)`` of process ``rank``'s share of the shards in sorted order, in order:
        the whole batches of a one-process run that ``dataflow.epochs.prediction_share`` gives it; an index
        is the sample's position in that order. Read in this process, one stream: rows must come in
        order, and workers could only keep them in order by each reading every other batch's shards
        (use more processes instead)."""
        share = prediction_share(self.num_samples, self.batch_size, rank, world)
        for _, index, batch in self._ordered(share_plan(self.dataset.counts, share, self.batch_size), [0], mix(self.seed, 0, rank), 0, 0):
            first = share.start + index * self.batch_size
            yield torch.arange(first, min(first + self.batch_size, share.stop), dtype=torch.int64), batch

    # -- training passes --------------------------------------------------------------------------

    def _training_plan(self, pass_index: int) -> RankPlan:
        order = shard_order(len(self.dataset.counts), self.seed, pass_index, self.shuffle and not self._overfit)
        return training_plan(self.dataset.counts, order, self.rank, self.world, self.batch_size, self.streams, self.drop_last)

    def _evaluation_plan(self) -> RankPlan:
        return evaluation_plan(self.dataset.counts, self.rank, self.world, self.batch_size, self.streams)

    def _pass_seed(self, pass_index: int) -> int:
        return mix(self.seed, pass_index, self.rank)

    def _training_batches(self, epoch: int, start: int, restored: _Position | None) -> Iterator[Any]:
        per_pass = self.batches_per_pass()
        if self._len_epoch and not self._overfit:
            position = (epoch - 1) * self._len_epoch + start
        else:
            position = (0 if self._overfit else epoch - 1) * per_pass + start
        remaining = self.batches_per_epoch - start
        while remaining > 0:
            pass_index, offset = divmod(position, per_pass)
            for batch in islice(self._pass(pass_index, offset, restored), min(remaining, per_pass - offset)):
                yield batch
                remaining -= 1
                position += 1
            restored = None

    def _pass(self, pass_index: int, offset: int, restored: _Position | None) -> Iterator[Any]:
        """Pass ``pass_index`` from its batch ``offset``, each stream from its position."""
        plan = self._training_plan(pass_index)
        totals = [stream.batches for stream in plan.streams]
        samples = [min(n * self.batch_size, s.samples) for n, s in zip(taken_after(offset, totals), plan.streams)]
        if restored is not None:
            self._check_restored(restored, pass_index, samples, plan)
        self._position = position = _Position(pass_index, samples)
        for _, _, batch in self._ordered(plan, position.samples, self._pass_seed(pass_index), self.shuffle_buffer, self.num_workers):
            yield batch

    def _ordered(self, plan: RankPlan, samples: list[int], seed: int, buffer: int, workers: int) -> Iterator[tuple[int, int, Any]]:
        """``(stream, batch index in stream, batch)`` in :func:`next_stream` order, from the positions
        ``samples``, which advance (in place) as each batch is handed over, never when prefetched."""
        totals = [stream.batches for stream in plan.streams]
        taken = [math.ceil(n / self.batch_size) for n in samples]
        if next_stream(taken, totals) is None:
            return
        tagged = self._tagged(plan.streams, list(samples), seed, buffer, workers)
        pending: list[deque] = [deque() for _ in totals]
        try:
            while (stream := next_stream(taken, totals)) is not None:
                while not pending[stream]:
                    source, size, batch = next(tagged, (None, 0, None))
                    if source is None:
                        raise RuntimeError(f"stream {stream} ended before its {totals[stream]} planned batches")
                    if size < 0:
                        raise UserError(batch)
                    pending[source].append((size, batch))
                size, batch = pending[stream].popleft()
                samples[stream] += size
                taken[stream] += 1
                yield stream, taken[stream] - 1, batch
        finally:
            shut_down(tagged)  # now, even if a traceback keeps this frame alive

    def _tagged(
        self, streams: tuple[StreamPlan, ...], starts: list[int], seed: int, buffer: int, workers: int
    ) -> Iterator[tuple[int, int, Any]]:
        """``(stream, samples, batch)`` as ``workers`` workers (one per stream), or the main process, produce them."""
        skips = accepts_start(self._read)
        source = StreamPass(self._read, skips, self.dataset, streams, starts, self.batch_size, self.collate_fn, buffer, seed)
        if workers == 0:
            return iter(source)
        loader = DataLoader(
            source,
            batch_size=None,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(seed),  # worker seeds never draw from the global generator
            worker_init_fn=leave_stops_to_the_main_process,
        )
        iterator = iter(loader)
        track(iterator)
        return iterator

    # -- identity and resume checks ---------------------------------------------------------------

    def fingerprint(self) -> dict:
        """The data's identity for the run manifest (``logger/manifest.py``), without reading a sample."""
        return {"samples": self.num_samples, "hash": self._digest(), "of": f"{len(self.dataset.paths)} shards' names, sample counts and contents"}

    def _digest(self) -> str:
        """Names, sample counts and contents of the shards: a resume mid-pass needs the same data."""
        listing = [[path.name, count, content] for path, count, content in zip(self.dataset.paths, self.dataset.counts, self.dataset.contents)]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]

    def _check_same(self, state: dict) -> None:
        fix = "or from an epoch-end checkpoint (epoch-N.pth)"
        for key, mine in (("batch_size", self.batch_size), ("shuffle_buffer", self.shuffle_buffer), ("drop_last", self.drop_last)):
            if state.get(key) != mine:
                raise UserError(
                    f"data_loader.args.{key}: the checkpoint was written mid-epoch with {key} {state.get(key)}, this run has {mine}; "
                    f"resume with data_loader.args.{key}={json.dumps(state.get(key))}, {fix}"
                )
        saved_workers = state.get("num_workers")
        if not isinstance(saved_workers, int) or max(1, saved_workers) != self.streams:
            raise UserError(
                f"data_loader.args.num_workers: the checkpoint was written mid-epoch with num_workers {saved_workers}, this run has "
                f"{self.num_workers} (each worker reads its own stream); resume with data_loader.args.num_workers={saved_workers}, {fix}"
            )
        if state.get("world_size") != self.world:
            raise UserError(
                f"data_loader: the checkpoint was written mid-epoch by {state.get('world_size')} process(es), this run has {self.world}; "
                f"resume with torchrun --nproc_per_node={state.get('world_size')}, {fix}"
            )
        if state.get("data") != self._digest():
            raise UserError(f"data_loader: the shards are not those the checkpoint was written with; resume with the same shards, {fix}")

    def _check_restored(self, restored: _Position, pass_index: int, samples: list[int], plan: RankPlan) -> None:
        """The saved positions must be where the Trainer's batch count says the streams are."""
        if (restored.pass_index, restored.samples) == (pass_index, samples):
            return
        whole = [stream.samples for stream in plan.streams]
        if (restored.pass_index, restored.samples) == (pass_index - 1, whole) and not any(samples):
            return  # the checkpoint fell on the boundary between two passes
        raise UserError(
            f"data_loader: the checkpoint's stream positions (pass {restored.pass_index}, samples {restored.samples}) are not where "
            f"this run's epoch plan continues (pass {pass_index}, samples {samples}); resume with the run's trainer.len_epoch and "
            f"trainer.limit_batches, or from an epoch-end checkpoint (epoch-N.pth)"
        )
