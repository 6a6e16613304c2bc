"""Fields of a structured output or target, by name: one head of a multi-head model for a metric.

A field's name is a path through dicts (by key), namedtuples (by field name) and tuples or lists
(by position), joined with dots: ``"cls"``, ``"heads.cls"``, ``"0"``. These are the names that
``predict.py`` gives the same fields in its files (``trainer/predictor.py``).

A metrics entry points at fields with ``"output"`` and ``"target"``::

    {"type": "accuracy", "output": "cls", "target": "cls", "name": "acc_cls"}
    {"type": "torchmetrics.regression:MeanSquaredError", "output": "reg", "target": "reg", "name": "mse"}

The metric then sees ``output["cls"]`` and ``target["cls"]`` instead of the whole structures;
either key may be left out (a metric of one head against a plain tensor target). A field that is
not there is one line at the pre-flight naming the fields that are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Selected:
    """A metric (function or object) that takes the fields ``output`` and ``target`` (None: the whole value)."""

    metric: Any
    output: str | None = None
    target: str | None = None


class MissingField(LookupError):
    """A path that names no field of the value; its message lists the fields there are."""


def pick(value: Any, path: str | None) -> Any:
    """The field of ``value`` at ``path`` (``value`` itself for None); :class:`MissingField` if absent."""
    if path is None:
        return value
    node = value
    for part in path.split("."):
        node = _child(node, part, path, value)
    return node


def _child(node: Any, part: str, path: str, whole: Any) -> Any:
    if isinstance(node, dict):
        if part in node:
            return node[part]
    elif isinstance(node, tuple) and hasattr(node, "_fields") and part in node._fields:
        return getattr(node, part)
    elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    there = field_names(whole)
    raise MissingField(
        f"has no field {path!r}; " + (f"its fields are {there}" if there else f"it is a {type(whole).__name__}, not a structure of fields")
    )


def field_names(value: Any, prefix: str = "") -> list[str]:
    """Every path to a leaf of ``value`` (empty for a tensor or another non-structure)."""
    if isinstance(value, dict):
        items = [(str(key), item) for key, item in value.items()]
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        items = list(zip(value._fields, value))
    elif isinstance(value, (list, tuple)):
        items = [(str(position), item) for position, item in enumerate(value)]
    else:
        return []
    names: list[str] = []
    for name, item in items:
        inner = field_names(item, f"{prefix}{name}.")
        names += inner or [prefix + name]
    return names
