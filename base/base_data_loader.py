"""BaseDataLoader: a ``torch.utils.data.DataLoader`` with a seeded validation split, exact
resumable data order, DDP sharding, and an optional in-memory fast path.

The loader owns the data order. Pass ``p`` over the data is shuffled by a generator seeded with
``seed + p`` (torch's own ``DistributedSampler`` recipe), so it depends only on the run seed and
``p``. The Trainer asks for an epoch with one call, :meth:`BaseDataLoader.epoch_batches`, after
:meth:`BaseDataLoader.plan_epochs` has said what an epoch is (one pass, ``len_epoch`` batches of
an endless stream of passes, or the first N batches in overfit mode) and where the data lives;
a mid-epoch resume starts the epoch at its batch, without repeating or skipping a sample.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset
from torch.utils.data.dataloader import default_collate

from base.serving import Serving
from dataflow.epochs import epoch_length, prediction_batches, targets_of
from dataflow.samplers import EvaluationShardSampler, ResumableDistributedSampler, SampleSeededDataset
from dataflow.splits import split_indices
from dataflow.workers import init_worker, track
from utils import distributed
from utils.errors import UserError
from utils.nested import leaves, map_tensors


class BaseDataLoader(DataLoader):
    """Base class for the project's data loaders; subclasses build a Dataset and call ``super().__init__``.

    Args:
        dataset: the training (or test) dataset.
        batch_size: samples per batch **per process** (the global batch is ``batch_size * world_size``).
        shuffle: shuffle the training split each pass (seeded, see the module docstring).
        validation_split: validation samples: an int is a count, a float a fraction of ``dataset``.
        folds, fold: instead, fold ``fold`` (0-based) of a ``folds``-fold partition of ``dataset``
            validates (stratified by class targets; ``dataflow/splits.py``). ``python train.py
            --folds K`` runs every fold.
        fold_groups: keep groups together in the folds: the name of a method of the loader
            returning one group per sample, or of an attribute of ``dataset`` holding them, or a
            key of the samples (dicts).
        num_workers: DataLoader worker processes.
        collate_fn: how samples become a batch.
        training: False builds an evaluation loader (test split): no shuffle, no split, no padding.
        validation_dataset: the same samples as ``dataset`` seen through validation transforms;
            the validation split indexes into it (defaults to ``dataset``).
        split_seed: seed of the split's own ``torch.Generator``; the global seeds never touch it,
            so every run of a config validates on the same samples.
        in_memory: keep the whole split as tensors (on the training device when it fits) and
            batch by indexing; same order, sharding and ``drop_last`` as the regular path.
            Transforms run once, so leave it off for random augmentation.
        drop_last: drop the last incomplete training batch.
        shard: ``(rank, world_size)`` to read as, instead of torch.distributed's; lets tests and
            tools see any rank's share without starting a process group.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = True,
        validation_split: int | float = 0.0,
        num_workers: int = 0,
        collate_fn: Callable = default_collate,
        training: bool = True,
        validation_dataset: Dataset | None = None,
        split_seed: int = 0,
        in_memory: bool = False,
        drop_last: bool = False,
        shard: tuple[int, int] | None = None,
        folds: int = 0,
        fold: int = 0,
        fold_groups: str | None = None,
    ):
        check_loader_counts(batch_size, num_workers)
        self.training = training
        self.in_memory = in_memory
        self.shuffle = shuffle and training
        self.init_kwargs = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "collate_fn": collate_fn,
            "in_memory": in_memory,
            "shard": shard,
        }
        self.valid_subset: Dataset | None = None
        self.split: dict | None = None
        """What chose the validation samples, and their indices in ``dataset`` (a run's ``split.json``)."""
        if training and (validation_split or folds):
            targets = targets_of(dataset) if folds else None
            groups = self._fold_groups(fold_groups, dataset) if folds and fold_groups else None
            train_idx, valid_idx = self.split_indices(len(dataset), validation_split, split_seed, folds, fold, targets, groups)
            self.split = {"validation_split": validation_split, "split_seed": split_seed, "folds": folds, "fold": fold,
                          "fold_groups": fold_groups, "pool": len(dataset), "validation": valid_idx}  # fmt: skip
            dataset, self.valid_subset = Subset(dataset, train_idx), Subset(validation_dataset or dataset, valid_idx)
        rank, world = shard if shard is not None else (distributed.rank(), distributed.world_size())
        if training:
            sampler: Sampler = ResumableDistributedSampler(dataset, world, rank, self.shuffle, drop_last)
        else:
            sampler = EvaluationShardSampler(dataset, world, rank)
        self.seed = 0
        self.pass_seed = 0
        self._len_epoch: int | None = None
        self._overfit = 0
        self.batches_per_epoch = 0
        if num_workers > 0 and not in_memory:
            dataset = SampleSeededDataset(dataset)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=0 if in_memory else num_workers,
            collate_fn=collate_fn,
            pin_memory=torch.cuda.is_available() and not in_memory,
            drop_last=drop_last and training,
            worker_init_fn=init_worker,  # seeds, and leaves SIGINT/SIGTERM to the main process (dataflow/workers.py)
            generator=torch.Generator(),
        )
        self._memory: Any = None
        self._memory_device = torch.device("cpu")

    # -- split --------------------------------------------------------------------------------

    split_indices = staticmethod(split_indices)
    """``split_indices(size, validation_split, split_seed=0, folds=0, fold=0, targets=None, groups=None)``:
    the sorted (training, validation) indices this class makes of ``size`` samples with these
    arguments (``dataflow/splits.py``). Call it before ``super().__init__`` to fit something on
    the training part only (a vocabulary, a scaler): ``data_loader/text.py`` does."""

    def _fold_groups(self, name: str, dataset: Dataset) -> list:
        """One group per sample of ``dataset`` from ``fold_groups`` (see the class docstring)."""
        method = getattr(self, name, None)
        if callable(method):
            groups = list(method())
        elif getattr(dataset, name, None) is not None:
            groups = list(getattr(dataset, name))
        else:
            first = dataset[0]
            if not isinstance(first, dict) or name not in first:
                raise UserError(
                    f"data_loader.args.fold_groups: {name!r} is neither a method of {type(self).__name__}, an attribute of its "
                    f"dataset, nor a key of its samples"
                )
            groups = [dataset[i][name] for i in range(len(dataset))]
        groups = [g.item() if isinstance(g, torch.Tensor) else g for g in groups]
        if len(groups) != len(dataset):
            raise UserError(f"data_loader.args.fold_groups: {name!r} gave {len(groups)} groups for {len(dataset)} samples; give one per sample")
        return groups

    def split_validation(self) -> BaseDataLoader | None:
        """The validation loader (evaluation sharding, no shuffle), or None without a split."""
        if self.valid_subset is None:
            return None
        return BaseDataLoader(self.valid_subset, training=False, **self.init_kwargs)

    @property
    def base_dataset(self) -> Dataset:
        """The dataset without the worker-seeding wrapper."""
        return self.dataset.dataset if isinstance(self.dataset, SampleSeededDataset) else self.dataset

    # -- data order -----------------------------------------------------------------------------

    def set_seed(self, seed: int) -> None:
        """The run seed: pass ``p`` is shuffled with ``seed + p``."""
        self.seed = seed
        self.sampler.seed = seed

    def set_epoch(self, pass_index: int, start_batch: int = 0) -> None:
        """Prepare pass ``pass_index`` (0-based), starting at batch ``start_batch`` of this rank."""
        self.sampler.set_position(pass_index, start_batch * self.batch_size)
        self.pass_seed = self.seed * 1_000_003 + pass_index
        self.generator.manual_seed(self.pass_seed)
        if isinstance(self.dataset, SampleSeededDataset):
            self.dataset.pass_seed = self.pass_seed

    @property
    def samples_per_pass(self) -> int:
        """Samples this rank sees in a whole pass (including DDP padding)."""
        sampler = self.sampler
        start, sampler.start = sampler.start, 0
        try:
            return len(sampler)
        finally:
            sampler.start = start

    def batches_per_pass(self) -> int:
        samples = self.samples_per_pass
        return samples // self.batch_size if self.drop_last else math.ceil(samples / self.batch_size)

    def plan_epochs(self, device: torch.device, len_epoch: int | None = None, overfit_batches: int = 0, limit_batches: int = 0) -> None:
        """Say what an epoch is (see the module docstring) and where batches are wanted.

        ``overfit_batches`` turns shuffling off: every epoch is the same first N batches.
        """
        self._len_epoch, self._overfit = len_epoch, overfit_batches
        if overfit_batches:
            self.sampler.shuffle = False
        per_pass = self.batches_per_pass()
        self.batches_per_epoch = epoch_length(per_pass, len_epoch, overfit_batches, limit_batches)
        if self.batches_per_epoch < 1 and self.training:
            if len(self.sampler.dataset) == 0:
                raise UserError("data_loader: the training split has no samples; check the data (and validation_split)")
            raise UserError("data_loader.args.batch_size: the training split yields no batch; lower batch_size or turn off drop_last")
        self.to_device(device)

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """Batches ``start..batches_per_epoch`` of ``epoch`` (1-based) on this rank."""
        remaining = self.batches_per_epoch - start
        if self._overfit or not self._len_epoch:
            self.set_epoch(0 if self._overfit else epoch - 1, start)
            yield from islice(self, remaining)
            return
        per_pass = self.batches_per_pass()
        position = (epoch - 1) * self._len_epoch + start
        while remaining > 0:
            pass_index, offset = divmod(position, per_pass)
            self.set_epoch(pass_index, offset)
            for batch in islice(self, min(remaining, per_pass - offset)):
                yield batch
                remaining -= 1
                position += 1

    def prediction_batches(self, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, Any]]:
        """``(sample indices, batch)`` of this process's share of the split, in order, unshuffled
        (see ``dataflow/epochs.py``, :func:`prediction_share`); indices count within the split."""
        return prediction_batches(self.base_dataset, self.batch_size, self.collate_fn, rank, world, self.num_workers)

    def state_dict(self) -> dict:
        """What a mid-epoch resume must match: the position in an epoch counts batches of this size."""
        return {"batch_size": self.batch_size}

    def load_state_dict(self, state: dict, mid_epoch: bool) -> None:
        if mid_epoch and state["batch_size"] != self.batch_size:
            raise UserError(
                f"data_loader.args.batch_size: the checkpoint was written mid-epoch with batch_size {state['batch_size']}, "
                f"this run has {self.batch_size}; resume with batch_size={state['batch_size']}, or from an epoch-end checkpoint (epoch-N.pth)"
            )

    # -- serving (base/serving.py) --------------------------------------------------------------

    def serving_state(self) -> dict:
        """What :meth:`serving_transforms` needs (fitted statistics, a lookup table) as plain data:
        tensors, numbers, strings, lists and dicts of them. The Trainer saves it in every checkpoint
        (``serving``), so an export rebuilds the transforms from the checkpoint, never by refitting.
        Default: nothing (the model takes what a service sends)."""
        return {}

    def serving_transforms(self, state: dict) -> Serving:
        """The modules a service applies before and after the model, built from ``state`` (a
        checkpoint's :meth:`serving_state`); the export wraps them with the model into one module."""
        return Serving()

    def serving_inputs(self) -> Iterable[Any] | None:
        """This split's raw inputs (what ``Serving.before`` takes), batch by batch and in order,
        for the export to trace and check on; None: the inputs of this loader's own batches."""
        return None

    # -- in-memory fast path --------------------------------------------------------------------

    def to_device(self, device: torch.device) -> None:
        """In-memory mode: hold the data on ``device`` when it takes under half of its free memory."""
        if not self.in_memory:
            return
        memory = self._materialize()
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if _nbytes(memory) > free // 2:
                return
        if device.type != "cpu":
            self._memory = map_tensors(memory, lambda t: t.to(device))
            self._memory_device = device

    def _materialize(self) -> Any:
        if self._memory is None:
            self._memory = _as_tensors(self.base_dataset, self.collate_fn)
        return self._memory

    def __iter__(self) -> Iterator[Any]:
        if self.in_memory:
            return self._iter_in_memory()
        iterator = super().__iter__()
        if self.num_workers > 0:
            track(iterator)  # shut down at exit: its workers ignore the SIGTERM multiprocessing would send
        return iterator

    def _iter_in_memory(self) -> Iterator[Any]:
        memory = self._materialize()
        order = self.sampler.order_tensor().to(self._memory_device)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        flat = isinstance(memory, list) and all(isinstance(t, torch.Tensor) for t in memory)
        for index in order[:stop].split(self.batch_size):
            if flat:  # the common (inputs, target) case without the generic walk
                yield [t.index_select(0, index) for t in memory]
            else:
                yield map_tensors(memory, lambda t, index=index: t.index_select(0, index))


def refuse_set_args(loader: str, kwargs: dict, **why: str) -> None:
    """One line for a config that names a ``BaseDataLoader`` argument this loader sets itself (``why``
    says how), instead of a clash inside the loader or a value silently used against its design."""
    for name, reason in why.items():
        if name in kwargs:
            raise UserError(f"data_loader.args.{name}: {loader} {reason}; remove it from data_loader.args")


def check_loader_counts(batch_size: Any, num_workers: Any) -> None:
    """Sizes a DataLoader can work with: a batch of at least one sample (and one torch can index),
    and at most 8 worker processes per CPU core (each is a whole Python process)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 2**31 - 1:
        raise UserError(f"data_loader.args.batch_size: must be a whole number from 1 to 2**31 - 1, got {batch_size!r}")
    cores = os.cpu_count() or 1
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or not 0 <= num_workers <= 8 * cores:
        raise UserError(f"data_loader.args.num_workers: must be from 0 to {8 * cores} (8 per CPU core here), got {num_workers!r}")


def _as_tensors(dataset: Dataset, collate_fn: Callable) -> Any:
    """The whole dataset as one collated batch; a (Subset of a) TensorDataset without copying item by item.

    The shortcut yields a list, as ``default_collate`` does, so both paths give the same batches.
    """
    if collate_fn is default_collate and isinstance(dataset, TensorDataset):
        memory: Any = list(dataset.tensors)
    elif collate_fn is default_collate and isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorDataset):
        index = torch.as_tensor(dataset.indices, dtype=torch.int64)
        memory = [t.index_select(0, index) for t in dataset.dataset.tensors]
    else:
        memory = collate_fn([dataset[i] for i in range(len(dataset))])
    for leaf in leaves(memory):
        if not isinstance(leaf, torch.Tensor) or leaf.dim() == 0 or len(leaf) != len(dataset):
            found = f"a tensor of shape {tuple(leaf.shape)}" if isinstance(leaf, torch.Tensor) else type(leaf).__name__
            raise UserError(
                f"data_loader.args.in_memory: every field of a batch must be a tensor with one row per sample to be "
                f"held in memory, found {found}; set in_memory to false for this dataset"
            )
    return memory


def _nbytes(batch: Any) -> int:
    return sum(t.nbytes for t in leaves(batch) if isinstance(t, torch.Tensor))
