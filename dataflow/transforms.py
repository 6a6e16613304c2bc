"""Image transforms from the config: ``data_loader.args.transforms: {"train": [...], "eval": [...]}``.

Each item is ``{"type": name, "args": {...}}``: a class of ``torchvision.transforms.v2`` by its
name (``RandomRotation``, ``ColorJitter``, ``Resize``...) or your own by full path
``package.module:Name`` (any callable taking and returning an image). A list holds only what
changes the image; the loader appends the conversion to a float tensor in [0, 1] and its
normalisation, so ``[]`` means "the image as it is". ``train`` is used for the training split,
``eval`` for validation, test and ``predict.py``; a key left out keeps the loader's default.

The config checks every full-path name against the trust rule before the loader is built
(``app/config/validation.py``), so a checkpoint's config cannot make a loader import other code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from utils.errors import UserError, closest, first_line

PHASES = ("train", "eval")


def check_transforms(spec: Any) -> dict[str, list]:
    """``spec`` as ``{"train": [...], "eval": [...]}`` (either may be missing); a wrong shape is one line."""
    key = "data_loader.args.transforms"
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise UserError(f'{key}: expected {{"train": [...], "eval": [...]}}, got {spec!r}')
    for phase, items in spec.items():
        if phase not in PHASES:
            raise UserError(f"{key}.{phase}: unknown phase{closest(phase, PHASES, key + '.')}; use 'train' or 'eval'")
        if not isinstance(items, list):
            raise UserError(f'{key}.{phase}: expected a list of {{"type": ..., "args": {{...}}}}, got {items!r}')
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("type"), str) or not set(item) <= {"type", "args"}:
                raise UserError(f'{key}.{phase}.{index}: expected {{"type": "Name", "args": {{...}}}}, got {item!r}')
    return spec


def build_transform(item: dict, key: str) -> Callable:
    """One transform from its node (see the module docstring)."""
    from torchvision.transforms import v2

    name, args = item["type"], item.get("args") or {}
    if ":" in name:
        module_name, _, attr = name.partition(":")
        target = getattr(importlib.import_module(module_name), attr, None)
    else:
        target = getattr(v2, name, None)
        if not isinstance(target, type) or name.startswith("_"):
            names = [n for n in dir(v2) if not n.startswith("_") and isinstance(getattr(v2, n), type)]
            raise UserError(f"{key}.type: torchvision.transforms.v2 has no transform {name!r}{closest(name, names)}")
    if not callable(target):
        raise UserError(f"{key}.type: {name!r} is not a class or function")
    try:
        return target(**args)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{key}.args: {name}(...) rejected its arguments: {first_line(exc)}; fix the values in the config") from None


def pipeline(items: Sequence[dict], tail: list, key: str) -> Callable:
    """``items`` (built from their nodes) followed by ``tail``, as one ``v2.Compose``."""
    from torchvision.transforms import v2

    built = [build_transform(item, f"{key}.{index}") for index, item in enumerate(items)]
    return v2.Compose([*built, *tail])


def to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    """What every image loader appends: a float tensor in [0, 1], normalised per channel."""
    import torch
    from torchvision.transforms import v2

    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
