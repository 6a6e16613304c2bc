"""Which samples each (rank, stream) of a sharded stream reads in a pass: pure arithmetic on the
shards' sample counts, the same on every process, so ranks agree without talking.

A pass ``p`` reads the shards in an order shuffled by ``(seed, p)``; concatenated, they are the
pass's global sequence of ``N`` samples. Training splits it into one contiguous range per rank
(sizes differ by at most one sample), cuts each range into batches (only the range's last batch
may be partial) and gives every rank the same number of batches, the minimum over ranks: the
samples past it (fewer than ``world_size``, or with ``drop_last`` each rank's partial batch) are
the tail, left out of this pass; the shard order moves it elsewhere next pass. A rank's batches
are then split into contiguous blocks, one per stream (DataLoader worker), of near-equal batch
counts, so a worker reads its own part of a few shards start to end.

Evaluation reads the shards in sorted order, one contiguous range per rank, nothing left out.
Predictions read a rank's share of whole single-process batches (``dataflow.epochs.prediction_share``)
of the same in-order sequence as one stream, in order.

The Trainer takes one batch at a time from the streams in a fixed order (:func:`next_stream`),
so "how many batches each stream has given" is a function of how many batches were taken.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Piece:
    """Samples ``start..stop`` of shard ``shard`` (an index into the sorted shard list)."""

    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class StreamPlan:
    """One stream's block: ``samples`` samples from offset ``first`` of the pass's sequence."""

    first: int
    samples: int
    batches: int
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class RankPlan:
    """A rank's share of a pass: its streams, its batch count, and the samples left out by all ranks."""

    streams: tuple[StreamPlan, ...]
    batches: int
    tail: int


def mix(*values: int) -> int:
    """A 63-bit seed from integers (seed, pass, rank, ...), well spread even for neighbours."""
    digest = hashlib.blake2b(repr(tuple(int(v) for v in values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def shard_order(count: int, seed: int, pass_index: int, shuffle: bool) -> list[int]:
    """The shards' order in pass ``pass_index``: sorted, or shuffled by ``(seed, pass_index)`` alone."""
    if not shuffle:
        return list(range(count))
    return torch.randperm(count, generator=torch.Generator().manual_seed(mix(seed, pass_index))).tolist()


def near_equal(total: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, size)`` ranges covering ``range(total)``, sizes differing by at most one."""
    bounds = [i * total // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(parts)]


def pieces(counts: Sequence[int], order: Sequence[int], first: int, stop: int) -> tuple[Piece, ...]:
    """The shard pieces that hold samples ``first..stop`` of the sequence of shards ``order``."""
    found, offset = [], 0
    for shard in order:
        lo, hi = max(first, offset), min(stop, offset + counts[shard])
        if lo < hi:
            found.append(Piece(shard, lo - offset, hi - offset))
        offset += counts[shard]
        if offset >= stop:
            break
    return tuple(found)


def streams_of(
    counts: Sequence[int], order: Sequence[int], first: int, samples: int, batch_size: int, streams: int
) -> tuple[StreamPlan, ...]:
    """Samples ``first..first+samples`` in batches, split into ``streams`` blocks of whole batches."""
    batches = math.ceil(samples / batch_size)
    plans, batch = [], 0
    for _, size in near_equal(batches, streams):
        start = first + batch * batch_size
        count = max(0, min(size * batch_size, first + samples - start))
        plans.append(StreamPlan(start, count, size, pieces(counts, order, start, start + count)))
        batch += size
    return tuple(plans)


def batches_per_rank(total: int, world: int, batch_size: int, drop_last: bool) -> int:
    """The batches every rank takes in a training pass: the minimum over the ranks' ranges."""
    sizes = [size for _, size in near_equal(total, world)]
    return min(size // batch_size if drop_last else math.ceil(size / batch_size) for size in sizes)


def training_plan(
    counts: Sequence[int], order: Sequence[int], rank: int, world: int, batch_size: int, streams: int, drop_last: bool
) -> RankPlan:
    """Rank ``rank``'s share of a training pass over shards in ``order`` (see the module docstring)."""
    total = sum(counts)
    batches = batches_per_rank(total, world, batch_size, drop_last)
    ranges = near_equal(total, world)
    tail = sum(size - min(size, batches * batch_size) for _, size in ranges)
    first, size = ranges[rank]
    used = min(size, batches * batch_size)
    return RankPlan(streams_of(counts, order, first, used, batch_size, streams), batches, tail)


def evaluation_plan(counts: Sequence[int], rank: int, world: int, batch_size: int, streams: int) -> RankPlan:
    """Rank ``rank``'s contiguous share of the in-order sequence, every sample once."""
    first, size = near_equal(sum(counts), world)[rank]
    plans = streams_of(counts, range(len(counts)), first, size, batch_size, streams)
    return RankPlan(plans, math.ceil(size / batch_size), 0)


def share_plan(counts: Sequence[int], share: range, batch_size: int) -> RankPlan:
    """One stream reading samples ``share`` of the in-order sequence in batches (predictions)."""
    plans = streams_of(counts, range(len(counts)), share.start, len(share), batch_size, 1)
    return RankPlan(plans, plans[0].batches, 0)


def next_stream(taken: Sequence[int], batches: Sequence[int]) -> int | None:
    """The stream the next batch comes from: round-robin over streams with batches left, i.e. the
    one that has given the fewest (lowest index first); None when all are done. A function of the
    counts alone, so a resumed run continues the order of the uninterrupted one."""
    best = None
    for stream, (done, total) in enumerate(zip(taken, batches)):
        if done < total and (best is None or done < taken[best]):
            best = stream
    return best


def taken_after(count: int, batches: Sequence[int]) -> list[int]:
    """Batches each stream has given once ``count`` batches were taken in :func:`next_stream` order."""
    taken = [0] * len(batches)
    for _ in range(count):
        stream = next_stream(taken, batches)
        if stream is None:
            break
        taken[stream] += 1
    return taken
