"""Which samples validate: a seeded hold-out split, or fold ``i`` of a K-fold partition.

Both depend only on the data set's size (and its targets or groups, for folds) and ``split_seed``,
never on the run seed or the process, so every run, process and resume of a config validates on
the same samples, and the K folds of a cross-validation are disjoint and cover the training pool.

- **hold-out** (``validation_split``): a count, or a fraction of the samples, drawn by a
  permutation from ``split_seed``'s own generator;
- **K folds** (``folds: K, fold: i``): fold ``i`` validates and the other ``K - 1`` train
  (``validation_split`` is then not used, so a loader's default hold-out needs no change).
  Targets that are class labels (integers from 0, or names) are *stratified*: each class's samples, in a
  seeded order, are dealt to the folds in turn, so every fold holds each class within one sample
  of its share, and fold sizes differ by at most one. Other targets (a regression) are dealt
  plainly. With groups (``fold_groups``), whole groups go to the fold with the fewest samples so
  far, largest groups first, so no group is split (stratification is then not attempted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from utils.errors import UserError


def holdout_indices(size: int, validation_split: int | float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices, each sorted, for a hold-out of ``validation_split`` samples."""
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)):
        raise UserError(f"data_loader.args.validation_split: must be a count or a fraction, got {validation_split!r}")
    count = validation_split if isinstance(validation_split, int) else int(round(size * validation_split))
    if not (0 < count < size) or (isinstance(validation_split, float) and not 0.0 < validation_split < 1.0):
        raise UserError(
            f"data_loader.args.validation_split: {validation_split!r} leaves no training or no validation data "
            f"from {size} samples; use a fraction in (0, 1) or a count below {size}"
        )
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return sorted(order[count:].tolist()), sorted(order[:count].tolist())


def class_indices(targets: Any) -> list | None:
    """``targets`` as a list of class labels (whole numbers from 0, or names), or None when they are
    not classes (floats, vectors, a mixture): those folds are dealt plainly."""
    if isinstance(targets, torch.Tensor):
        if targets.dim() == 2 and targets.shape[1] == 1:
            targets = targets[:, 0]  # one label per row, as a column
        if targets.dim() != 1 or targets.is_floating_point() or targets.dtype == torch.bool:
            return None
        values = targets.tolist()
    elif isinstance(targets, Sequence) and not isinstance(targets, str):
        values = list(targets)
        if all(isinstance(v, str) for v in values):
            return values or None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return None
    else:
        return None
    return values if values and min(values) >= 0 else None


def kfold(size: int, folds: int, seed: int, targets: Any = None, groups: Sequence | None = None) -> list[list[int]]:
    """The ``folds`` validation sets of a K-fold partition of ``range(size)`` (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    dealt: list[list[int]] = [[] for _ in range(folds)]
    if groups is not None:
        members: dict[Any, list[int]] = {}
        for index, group in enumerate(groups):
            members.setdefault(group, []).append(index)
        if len(members) < folds:
            raise UserError(f"data_loader.args.fold_groups: {len(members)} groups cannot fill {folds} folds; lower data_loader.args.folds")
        names = list(members)
        order = [names[i] for i in torch.randperm(len(names), generator=generator).tolist()]
        order.sort(key=lambda name: -len(members[name]))  # stable: equal sizes keep the seeded order
        for name in order:
            smallest = min(range(folds), key=lambda k: (len(dealt[k]), k))
            dealt[smallest] += members[name]
        return [sorted(fold) for fold in dealt]
    classes = class_indices(targets) if targets is not None else None
    if classes is None:
        classes = [0] * size
    by_class: dict[Any, list[int]] = {}
    for index, label in enumerate(classes):
        by_class.setdefault(label, []).append(index)
    offset = 0
    for label in sorted(by_class):
        indices = by_class[label]
        for position in torch.randperm(len(indices), generator=generator).tolist():
            dealt[offset % folds].append(indices[position])
            offset += 1
    return [sorted(fold) for fold in dealt]


def split_indices(
    size: int,
    validation_split: int | float = 0.0,
    split_seed: int = 0,
    folds: int = 0,
    fold: int = 0,
    targets: Any = None,
    groups: Sequence | None = None,
) -> tuple[list[int], list[int]]:
    """(training, validation) indices of ``range(size)``: fold ``fold`` of ``folds`` when ``folds`` is
    set, else a hold-out of ``validation_split`` (no validation when it is 0)."""
    if folds:
        check_folds(folds, fold, size)
        valid = kfold(size, folds, split_seed, targets, groups)[fold]
        chosen = set(valid)
        return [i for i in range(size) if i not in chosen], valid
    if not validation_split:
        return list(range(size)), []
    return holdout_indices(size, validation_split, split_seed)


def check_folds(folds: Any, fold: Any, size: int) -> None:
    key = "data_loader.args"
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise UserError(f"{key}.folds: must be a whole number of at least 2 (or 0: no folds), got {folds!r}")
    if folds > size:
        raise UserError(f"{key}.folds: {folds} folds of {size} samples leave a fold empty; lower it")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise UserError(f"{key}.fold: must be from 0 to {folds - 1} (folds are numbered from 0), got {fold!r}")
