"""The epoch protocol the Trainer iterates, and an adapter for loaders that do not speak it.

A data source the Trainer can train on has (``BaseDataLoader`` and ``BaseStreamLoader`` do):

- ``plan_epochs(device, len_epoch=None, overfit_batches=0, limit_batches=0)``: what an epoch is;
- ``batches_per_epoch``: how many batches this process takes per epoch;
- ``epoch_batches(epoch, start)``: the batches ``start..`` of epoch ``epoch`` (1-based);
- ``state_dict()`` / ``load_state_dict(state, mid_epoch)``: its position beyond (epoch, batch),
  and what a mid-epoch resume must match.

Anything else iterable with a length (a plain ``torch.utils.data.DataLoader``, a list of
batches) is wrapped in :class:`PlainEpochs`. Its order is whatever the loader gives: exact resume
then holds only if the loader's order does not depend on global random state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from utils.errors import UserError


def epoch_length(per_pass: int, len_epoch: int | None, overfit_batches: int, limit_batches: int) -> int:
    """Batches per epoch: one pass, or ``len_epoch`` batches of passes one after another, or the
    first ``overfit_batches`` (debugging); at most ``limit_batches`` when set."""
    count = min(overfit_batches, per_pass) if overfit_batches else (len_epoch or per_pass)
    return min(count, limit_batches) if limit_batches else count


def ceil_div(count: int, size: int) -> int:
    """Batches of ``size`` holding ``count`` items (the last one may be partial)."""
    return -(-count // size)


class PlainEpochs:
    """Epochs over any sized iterable: passes one after another, ``len_epoch`` batches when set."""

    def __init__(self, loader: Iterable):
        self.loader = loader
        self.batch_size = getattr(loader, "batch_size", None)
        self.batches_per_epoch = 0
        self._overfit = 0

    def plan_epochs(self, device: torch.device, len_epoch: int | None = None, overfit_batches: int = 0, limit_batches: int = 0) -> None:
        try:
            per_pass = len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            if not len_epoch:
                raise UserError("data_loader: a loader without a length needs trainer.len_epoch (batches per epoch)") from None
            per_pass = len_epoch
        self._overfit = overfit_batches
        self.batches_per_epoch = epoch_length(per_pass, len_epoch, overfit_batches, limit_batches)

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        sampler = getattr(self.loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(0 if self._overfit else epoch - 1)  # a DistributedSampler's order per epoch
        return islice(self._passes(), start, self.batches_per_epoch)

    def _passes(self) -> Iterator[Any]:
        """The loader's passes one after another (``len_epoch`` may span several)."""
        while True:
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
            if empty:
                return

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def state_dict(self) -> dict:
        return {"batch_size": self.batch_size}

    def load_state_dict(self, state: dict, mid_epoch: bool) -> None:
        return None


def prediction_share(samples: int, batch_size: int, rank: int, world: int) -> range:
    """The samples process ``rank`` predicts: a contiguous run of whole batches of the one-process
    batching (batch ``b`` is samples ``b*B .. b*B+B-1``), so every batch is the one a single
    process would see, and the processes' rows, concatenated in rank order, are in data set order."""
    batches = ceil_div(samples, batch_size)
    first, last = batches * rank // world, batches * (rank + 1) // world
    return range(first * batch_size, min(last * batch_size, samples))


def prediction_batches(
    dataset: Dataset, batch_size: int, collate_fn: Callable, rank: int = 0, world: int = 1, num_workers: int = 0
) -> Iterator[tuple[torch.Tensor, Any]]:
    """``(sample indices, batch)`` over this process's :func:`prediction_share` of ``dataset``, in order."""
    share = prediction_share(len(dataset), batch_size, rank, world)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch_size, sampler=list(share), collate_fn=collate_fn, num_workers=num_workers)
    for number, batch in enumerate(loader):
        start = share.start + number * batch_size
        yield torch.arange(start, min(start + batch_size, share.stop)), batch


TARGET_KEYS = ("label", "labels", "target", "targets", "y")
"""Where a dict sample or batch holds its target, unless ``trainer.target_key`` says."""


def targets_of(dataset: Dataset) -> Any:
    """Every sample's target, for stratified folds: the dataset's ``targets`` (torchvision's data
    sets have one; give yours one to save a pass), a ``TensorDataset``'s last tensor, or else each
    sample's last item (a dict's target key) read one by one."""
    found = getattr(dataset, "targets", None)
    if found is not None:
        return found
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1]
    if isinstance(dataset, Subset):
        inner = targets_of(dataset.dataset)
        return [inner[i] for i in dataset.indices] if inner is not None else None
    targets = []
    for index in range(len(dataset)):  # type: ignore[arg-type]
        sample = dataset[index]
        if isinstance(sample, dict):
            key = next((k for k in TARGET_KEYS if k in sample), None)
            if key is None:
                return None
            sample = sample[key]
        elif isinstance(sample, (tuple, list)) and len(sample) >= 2:
            sample = sample[-1]
        else:
            return None
        targets.append(sample.item() if isinstance(sample, torch.Tensor) and sample.numel() == 1 else sample)
    return targets


def epochs_of(loader: Any) -> Any:
    """``loader`` itself when it speaks the epoch protocol, else a :class:`PlainEpochs` over it."""
    return loader if callable(getattr(loader, "epoch_batches", None)) else PlainEpochs(loader)
