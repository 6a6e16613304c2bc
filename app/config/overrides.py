"""Command-line overrides: ``key.path=value`` (values read as YAML), ``+key.path=value`` to add a key.

Every documented key may be set even when the file leaves it out; only keys nobody documents are
typos, reported with the nearest full key paths.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import yaml

from app.config.names import closest, resolve_type
from app.config.reading import check_shape, load_yaml
from app.config.schema import NAMESPACES, OBJECT_KEYS, SCHEMA, SECTIONS, TRAINER_SCHEMA
from utils.errors import UserError


def parse_override(text: str) -> tuple[list[str], Any, bool]:
    """Split ``[+]a.b.c=value`` into its path, its YAML-parsed value and whether it may add a key."""
    if "=" not in text:
        raise UserError(f"override {text!r}: write overrides as key.path=value (e.g. trainer.epochs=3)")
    key, raw = text.split("=", 1)
    add = key.startswith("+")
    key = key.removeprefix("+")
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r}: the key path is empty or has an empty part; write key.path=value")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value, add


def apply_override(data: dict, text: str, source: str = "command line", trusted: bool = True) -> None:
    """Set one ``key.path=value`` in ``data`` (which already holds the defaults).

    Documented keys may be set even when absent (see :func:`is_documented`); any other new key
    needs a leading ``+``. ``trusted=False`` (a checkpoint's config): looking up an object's
    parameters never imports code the checkpoint names outside the project.
    """
    try:
        parts, value, add = parse_override(text)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    check_shape(value, f"{source}: override {text[:60]!r}")
    where = f"{source}: override {text!r}"
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        path = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise UserError(f"{where}: {path} is not an index of a list of {len(node)} items")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise UserError(f"{where}: {'.'.join(parts[:depth])} is {node!r}, not a mapping of keys; set the whole value instead")
        if part not in node and not add and not is_documented(data, parts[: depth + 1], trusted):
            raise UserError(f"{where}: unknown key {path}{_hint(data, parts[:depth], part, trusted)}")
        if last:
            node[part] = value
            return
        if node.get(part) is None:
            node[part] = {}
        node = node[part]


def is_documented(data: dict, parts: list[str], trusted: bool = True) -> bool:
    """Whether ``parts`` names a key documented for every config, so it may be set when absent.

    Those are the ``SCHEMA`` and ``trainer.*`` keys, an object node's own keys (``type``,
    ``args``, ...), and ``<object>.args.<name>`` when the object's type takes a parameter ``name``.
    """
    head = parts[0]
    if len(parts) == 1:
        return head in SCHEMA
    if head == "trainer":
        return len(parts) == 2 and parts[1] in TRAINER_SCHEMA
    if ".".join(parts[:-1]) in SECTIONS:
        return parts[-1] in SECTIONS[".".join(parts[:-1])]
    if head not in OBJECT_KEYS or head == "metrics":
        return False
    if len(parts) == 2:
        return parts[1] in OBJECT_KEYS[head]
    if len(parts) == 3 and parts[1] == "args":
        params = _parameters_of(data, parts[0], trusted)
        return params is None or parts[2] in params
    return False


def _hint(data: dict, parents: list[str], part: str, trusted: bool) -> str:
    """``did you mean`` with full key paths for an unknown ``part`` under ``parents``, plus how to add it."""
    prefix = "".join(f"{p}." for p in parents)
    node: Any = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    candidates = set(node) if isinstance(node, dict) else set()
    if not parents:
        candidates |= set(SCHEMA)
        if part in TRAINER_SCHEMA:
            return f"; did you mean 'trainer.{part}'?"
    elif parents == ["trainer"]:
        candidates |= set(TRAINER_SCHEMA)
    elif ".".join(parents) in SECTIONS:
        candidates |= set(SECTIONS[".".join(parents)])
    elif len(parents) == 1 and parents[0] in OBJECT_KEYS:
        candidates |= OBJECT_KEYS[parents[0]]
    elif len(parents) == 2 and parents[1] == "args" and parents[0] in NAMESPACES:
        candidates |= _parameters_of(data, parents[0], trusted) or set()
    hint = closest(part, candidates, prefix)
    if hint:
        return hint
    if len(parents) == 2 and parents[1] == "args" and candidates:
        return f"; {data[parents[0]]['type']} takes {sorted(candidates)}"
    if len(parents) >= 2:
        return f"; write +{prefix}{part}=... to add a key the config does not have"
    return "; see the README configuration reference for the keys"


def _parameters_of(data: dict, key: str, trusted: bool) -> set[str] | None:
    """Parameter names of the type of object node ``key`` (None: any name; empty: the type is unknown)."""
    node = data.get(key)
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        return set()
    try:
        return parameters(resolve_type(key, node["type"], "override", trusted))
    except UserError:
        return set()


def parameters(target: Callable) -> set[str] | None:
    """Names ``target`` accepts as keyword arguments, or None when it takes any (``**kwargs``).

    A class whose ``__init__`` takes ``**kwargs`` passes them on to its parent's ``__init__``
    (``super().__init__(**kwargs)``, the usual way), so its names are its own and its parent's:
    ``class MyLoader(BaseDataLoader): def __init__(self, data_dir, **kwargs)`` accepts
    ``data_dir`` and every ``BaseDataLoader`` argument, and a typo is still an error.
    """
    if inspect.isclass(target):
        names: set[str] = set()
        for cls in target.__mro__:
            init = cls.__dict__.get("__init__")
            if init is None:
                continue
            if cls is object:
                return None
            found = _named_parameters(init, skip_first=True)
            if found is None:
                return None
            names |= found[0]
            if not found[1]:
                return names
        return None
    found = _named_parameters(target)
    return None if found is None or found[1] else found[0]


def _named_parameters(function: Callable, skip_first: bool = False) -> tuple[set[str], bool] | None:
    """(keyword-capable parameter names, takes **kwargs), or None when there is no signature."""
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    params = params[1:] if skip_first else params
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)
