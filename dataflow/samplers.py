"""Samplers that make the data order a function of (seed, pass) and can start mid-pass.

Used by :class:`~base.base_data_loader.BaseDataLoader`: training passes are shuffled and sharded
exactly as torch's ``DistributedSampler`` does (in every run, with one replica outside DDP, so a
single-process run and a DDP run see the same global order); evaluation shards are in order and
unpadded, so reduced sums count every sample once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler


class ResumableDistributedSampler(DistributedSampler):
    """torch's ``DistributedSampler`` (same shuffle, padding and sharding) that can start mid-pass.

    Used in every run, with ``num_replicas=1`` outside DDP, so a single-process run and a DDP
    run see the same global order.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, drop_last: bool):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=0, drop_last=drop_last)
        self.start = 0

    def set_position(self, pass_index: int, start: int = 0) -> None:
        """Shuffle for pass ``pass_index`` and skip this rank's first ``start`` samples."""
        self.set_epoch(pass_index)
        self.start = start

    def indices(self) -> list[int]:
        return list(super().__iter__())[self.start :]

    def order_tensor(self) -> torch.Tensor:
        """``indices()`` as a tensor, built without a Python list (which costs more than a small model's step).

        Mirrors torch's ``DistributedSampler.__iter__`` (seeded permutation, padding or truncation,
        ``rank::num_replicas``); tests/test_in_memory.py checks it against ``indices()``'s batches.
        """
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        padding = self.total_size - n
        if padding > 0:
            order = torch.cat([order, order.repeat(math.ceil(padding / n))[:padding]])
        return order[: self.total_size][self.rank :: self.num_replicas][self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.num_samples - self.start


class EvaluationShardSampler(Sampler[int]):
    """In-order shard ``rank::world_size`` with no padding, so reduced sums count every sample once."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        self.length = len(dataset)
        self.num_replicas, self.rank = num_replicas, rank
        self.start = 0

    def set_position(self, pass_index: int, start: int = 0) -> None:
        self.start = start

    def indices(self) -> list[int]:
        return list(range(self.rank, self.length, self.num_replicas))[self.start :]

    def order_tensor(self) -> torch.Tensor:
        return torch.arange(self.rank, self.length, self.num_replicas)[self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas)) - self.start


class SampleSeededDataset(Dataset):
    """Seeds Python, NumPy and torch from (run seed, pass, index) before each sample in a worker.

    With worker processes, random augmentation would otherwise depend on which worker loaded a
    sample and what it loaded before; this makes it a function of the sample alone, so a run
    resumed mid-epoch draws the same augmentations. With ``num_workers=0`` samples draw from
    the main process's RNG, whose state checkpoints save, and this wrapper is not used.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.pass_seed = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        seed = (self.pass_seed * 1_000_003 + index) % 2**63
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return self.dataset[index]
