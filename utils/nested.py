"""Nested batches and outputs: tensors in dicts, lists and tuples (namedtuples too), walked one way everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def map_tensors(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``value`` with ``fn`` applied to every tensor in it; the structure and other leaves are kept."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {key: map_tensors(item, fn) for key, item in value.items()}
    if isinstance(value, list):
        return [map_tensors(item, fn) for item in value]
    if isinstance(value, tuple):
        items = [map_tensors(item, fn) for item in value]
        return type(value)._make(items) if hasattr(value, "_fields") else tuple(items)
    return value


def leaves(value: Any) -> list[Any]:
    """Every value in ``value`` that is not a dict, list or tuple, in order."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


MAX_DEPTH = 100
MAX_VALUES = 1_000_000


def shape_problem(value: Any) -> str | None:
    """Why ``value`` (dicts, lists and tuples) is too deep or too large to be a config or a checkpoint,
    or None, found without recursion and without expanding shared references: YAML aliases, or a
    pickle's memo in a checkpoint, can make a few lines stand for billions of values ("billion
    laughs"), and every later walk would expand them."""
    measured: dict[int, tuple[int, int]] = {}  # id -> (values, depth) of each container, counted once
    on_path: set[int] = set()
    tensors = TensorBytes()
    stack: list[tuple[Any, bool, str]] = [(value, False, "")]
    while stack:
        node, children_done, where = stack.pop()
        if isinstance(node, torch.Tensor):
            problem = tensors.add(node, where)
            if problem:
                return problem
            continue
        if not isinstance(node, (dict, list, tuple)):
            continue
        key = id(node)
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        if children_done:
            on_path.discard(key)
            inner = [measured[id(i)] if isinstance(i, (dict, list, tuple)) else (1, 0) for _, i in items]
            size, depth = 1 + sum(n for n, _ in inner), 1 + max((d for _, d in inner), default=0)
            if size > MAX_VALUES:
                return f"it expands to more than {MAX_VALUES:,} values (shared references repeated, as YAML aliases or a crafted file make)"
            if depth > MAX_DEPTH:
                return f"it is nested more than {MAX_DEPTH} levels deep"
            measured[key] = (size, depth)
            continue
        if key in measured:
            continue
        if key in on_path:
            return f"{where or 'the top level'} contains itself (a YAML alias inside its own value)"
        if len(on_path) >= MAX_DEPTH:
            return f"it is nested more than {MAX_DEPTH} levels deep"
        on_path.add(key)
        stack.append((node, True, where))
        stack.extend((item, False, f"{where}.{name}" if where else str(name)) for name, item in items)
    return None


class TensorBytes:
    """The bytes a checkpoint's tensors name against the bytes it holds: a saved tensor keeps its
    strides, so a one-element file can be an expanded view of billions (stride 0) that any copy
    (a checksum, ``.contiguous()``) would allocate; and one large tensor named a million times
    costs a million reads. Tied weights (a tensor named twice) are normal."""

    SLACK = 4
    FREE = 1 << 20

    def __init__(self):
        self.storages: set[int] = set()
        self.held = 0  # bytes of the distinct storages
        self.named = 0  # bytes the tensors name

    def add(self, tensor: torch.Tensor, where: str) -> str | None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or otherwise storage-less: not something a checkpoint of this template holds
            return f"{where or 'a value'} is a tensor without plain storage"
        needed = tensor.numel() * tensor.element_size()
        if tensor.numel() and needed > storage.nbytes():
            return f"{where or 'a value'} is a tensor of {tensor.numel():,} elements in {storage.nbytes():,} bytes (a view that repeats its elements, as only a crafted file has)"
        if storage.data_ptr() not in self.storages:
            self.storages.add(storage.data_ptr())
            self.held += storage.nbytes()
        self.named += needed
        if self.named > self.SLACK * self.held + self.FREE:
            return f"its tensors name the same {self.held:,} bytes more than {self.SLACK} times over (a crafted file)"
        return None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping by dotted key: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists, scalars and
    empty mappings are values (compared, logged or shown as a whole)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}
