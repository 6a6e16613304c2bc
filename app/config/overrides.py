"""Command-line overrides: ``key.path=value`` (values read as YAML), ``+key.path=value`` to add a
key, ``~key.path`` to delete one; list items by ``list[0]``, ``list[name=f1]``, ``list[type=Accuracy]``,
``list[+]`` to append (``metrics[name=f1].args.average=micro``). A file's ``patch`` mapping takes
the same key paths (``app/config/extends.py``): one syntax, one walk (:func:`patch`).

Every documented key may be set even when the file leaves it out; only keys nobody documents are
typos, reported with the nearest full key paths.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from app.config.names import closest, resolve_type
from app.config.reading import check_shape, load_yaml
from app.config.schema import NAMESPACES, OBJECT_KEYS, SCHEMA, SECTIONS, TRAINER_SCHEMA, metric_name
from utils.errors import UserError

SELECTORS = ("name", "type")
VARS = "vars"
"""The top-level mapping of the user's own values (``${vars.width}``): any key below it may be set."""


@dataclass(frozen=True)
class Step:
    """One step of a key path: a mapping's key (or a list's index written ``.3``), ``[index]``,
    ``[name=...]`` / ``[type=...]`` (the one list item whose field is that), or ``[+]`` (append)."""

    key: str | None = None
    index: int | None = None
    field: str | None = None
    value: str | None = None
    append: bool = False

    def text(self) -> str:
        if self.key is not None:
            return self.key
        if self.append:
            return "[+]"
        return f"[{self.index}]" if self.index is not None else f"[{self.field}={self.value}]"


def parse_path(key: str, where: str) -> list[Step]:
    """``a.b[name=f1].c`` as steps; ``where`` words the error."""
    form = "write a.b.c, list[0], list[name=f1], list[type=Accuracy] or list[+]"
    steps: list[Step] = []
    at = 0
    while at < len(key):
        if key[at] == "[" and steps:
            end = key.find("]", at)
            if end < 0:
                raise UserError(f"{where}: {key!r} has a '[' without its ']'; {form}")
            steps.append(_selector(key[at + 1 : end], key, where))
            at = end + 1
            continue
        if steps:
            if key[at] != ".":
                raise UserError(f"{where}: {key!r} is not a key path; {form}")
            at += 1
        end = min([i for i in (key.find(".", at), key.find("[", at)) if i >= 0] or [len(key)])
        if end == at or "]" in key[at:end]:
            raise UserError(f"{where}: the key path {key!r} is empty or has an empty part; {form}")
        steps.append(Step(key=key[at:end]))
        at = end
    if not steps or key.endswith("."):
        raise UserError(f"{where}: the key path {key!r} is empty or has an empty part; {form}")
    if any(step.append for step in steps[:-1]):
        raise UserError(f"{where}: [+] appends, so it can only end the key path {key!r}")
    return steps


def _selector(inside: str, key: str, where: str) -> Step:
    if inside == "+":
        return Step(append=True)
    if inside.lstrip("-").isdigit():
        return Step(index=int(inside))
    field, equals, value = inside.partition("=")
    if equals and field in SELECTORS and value:
        return Step(field=field, value=value)
    raise UserError(f"{where}: [{inside}] in {key!r} is not a list selector; write [0], [name=...], [type=...] or [+]")


def split_override(text: str) -> tuple[str, str | None]:
    """``path=value`` split at the first ``=`` outside brackets; ``~path`` has no value."""
    depth = 0
    for at, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "=" and depth == 0:
            return text[:at], text[at + 1 :]
    return text, None


def parse_value(raw: str) -> Any:
    try:
        return load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def apply_override(data: dict, text: str, source: str = "command line", trusted: bool = True, origins: dict | None = None) -> None:
    """Apply one override to ``data`` (which already holds the defaults): ``key.path=value``,
    ``+key.path=value`` (add a key nobody documents), ``~key.path`` (delete it); list items by
    ``[index]``, ``[name=...]``, ``[type=...]``, or appended with ``[+]`` (``metrics[name=f1].args.k=5``).

    Documented keys may be set even when absent (see :func:`is_documented`); any other new key
    needs a leading ``+``. ``trusted=False`` (a checkpoint's config): looking up an object's
    parameters never imports code the checkpoint names outside the project. ``origins`` (key path
    to where its value was set) is told this override set what it set.
    """
    key, raw = split_override(text)
    delete, add = key.startswith("~"), key.startswith("+")
    key = key[1:] if delete or add else key
    where = f"{source}: override {text!r}"
    if raw is None and not delete:
        raise UserError(
            f"{source}: override {text!r}: write overrides as key.path=value (e.g. trainer.epochs=3), or ~key.path to delete a key"
        )
    if delete and raw is not None and raw.strip():
        raise UserError(f"{where}: ~ deletes a key and takes no value; write ~{key}")
    steps = parse_path(key, where)
    value = parse_value(raw) if raw is not None and not delete else None
    check_shape(value, f"{source}: override {text[:60]!r}")
    documented = None if add or delete else (lambda parts: is_documented(data, parts, trusted))
    hint = lambda parts, part: _hint(data, parts, part, trusted)  # noqa: E731 - said only on a mistake
    patch(data, steps, value, where, delete=delete, documented=documented, hint=hint, origins=origins, origin=f"override {text}")


def patch(
    data: dict,
    steps: list[Step],
    value: Any,
    where: str,
    delete: bool = False,
    documented: Callable[[list[str]], bool] | None = None,
    hint: Callable[[list[str], str], str] | None = None,
    origins: dict | None = None,
    origin: str = "",
) -> None:
    """Set (or ``delete``) the value at ``steps`` in ``data``: the one walk that both a file's
    ``patch`` and a command-line override take, so the two cannot mean different things.

    ``documented(parts)``: may an absent key be set (None: any may, as in a file); ``origins``
    (dotted path -> origin) is kept true: what is replaced or deleted loses its entries, and the
    items after a removed list item move down with their entries.
    """
    node: Any = data
    parts: list[str] = []
    for depth, step in enumerate(steps):
        last = depth == len(steps) - 1
        shown = "".join(s.text() if s.key is None or not i else f".{s.text()}" for i, s in enumerate(steps[: depth + 1]))
        if isinstance(node, list):
            index = _item_of(node, step, shown, where)
            if last:
                if delete:
                    node.pop(index)
                    if origins is not None:
                        _shift(origins, ".".join(parts), index, len(node) + 1)
                    return
                if index == len(node):
                    node.append(copy.deepcopy(value))
                else:
                    node[index] = copy.deepcopy(value)
                if origins is not None:
                    mark(origins, ".".join([*parts, str(index)]), value, origin)
                return
            parts.append(str(index))
            node = node[index]
            continue
        if step.key is None:
            raise UserError(
                f"{where}: {step.text()} selects a list item, but {'.'.join(parts) or 'the top level'} is a mapping; name its key instead"
            )
        if not isinstance(node, dict):
            raise UserError(f"{where}: {'.'.join(parts)} is {node!r}, not a mapping of keys; set the whole value instead")
        part = step.key
        if part not in node:
            if delete:
                near = closest(part, node, "".join(f"{p}." for p in parts))
                raise UserError(f"{where}: {shown} is not in the config, so it cannot be deleted{near or '; check the key path'}")
            if documented is not None and not documented([*parts, part]):
                raise UserError(f"{where}: unknown key {shown}{hint(parts, part) if hint else ''}")
        if last:
            if delete:
                del node[part]
                if origins is not None:
                    mark(origins, ".".join([*parts, part]), None, None)
                return
            node[part] = copy.deepcopy(value)
            if origins is not None:
                mark(origins, ".".join([*parts, part]), value, origin)
            return
        if node.get(part) is None:
            if isinstance(steps[depth + 1], Step) and steps[depth + 1].key is None:
                raise UserError(f"{where}: {shown} is not a list, so {steps[depth + 1].text()} selects nothing; set the whole list instead")
            node[part] = {}
        parts.append(part)
        node = node[part]


def _item_of(items: list, step: Step, shown: str, where: str) -> int:
    """The index ``step`` names in ``items`` (``len(items)`` for ``[+]``)."""
    if step.append:
        return len(items)
    if step.field is not None:
        found = [i for i, item in enumerate(items) if _field(item, step.field) == step.value]
        if len(found) == 1:
            return found[0]
        have = [_field(item, step.field) for item in items]
        if not found:
            near = closest(step.value, [h for h in have if h], "")
            raise UserError(f"{where}: {shown}: no item has {step.field} {step.value!r} (the items' {step.field}s are {have}){near}")
        raise UserError(f"{where}: {shown}: items {found} both have {step.field} {step.value!r}; select one by index")
    raw = step.key if step.key is not None else str(step.index)
    if not raw.lstrip("-").isdigit() or not -len(items) <= int(raw) < len(items):
        fix = "use [+] to append" if raw.lstrip("-").isdigit() else "select an item by [index], [name=...] or [type=...]"
        raise UserError(f"{where}: {shown} is not an index of a list of {len(items)} items; {fix}")
    return int(raw) % len(items)


def _field(item: Any, field: str) -> str | None:
    """An item's ``name`` (a metric's logged name, as ``metric_name`` gives it) or ``type``."""
    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        return None
    if field == "name" and isinstance(item.get("type"), str):
        return metric_name(item)
    value = item.get(field)
    return value if isinstance(value, str) else None


def mark(origins: dict, path: str, value: Any, origin: str | None) -> None:
    """``origins`` after the value at ``path`` was replaced by ``value`` (from ``origin``; None: deleted)."""
    for key in [k for k in origins if k == path or k.startswith(f"{path}.")]:
        del origins[key]
    if origin is not None:
        origins[path] = origin


def _shift(origins: dict, path: str, removed: int, length: int) -> None:
    """``origins`` after item ``removed`` of the list at ``path`` (``length`` items before) was removed."""
    prefix = f"{path}." if path else ""
    moved = {}
    for key in list(origins):
        if not key.startswith(prefix):
            continue
        head, _, rest = key[len(prefix) :].partition(".")
        if not head.isdigit() or int(head) < removed:
            continue
        origin = origins.pop(key)
        if int(head) > removed:
            moved[f"{prefix}{int(head) - 1}" + (f".{rest}" if rest else "")] = origin
    origins.update(moved)


def is_documented(data: dict, parts: list[str], trusted: bool = True) -> bool:
    """Whether ``parts`` names a key documented for every config, so it may be set when absent.

    Those are the ``SCHEMA`` and ``trainer.*`` keys, an object node's own keys (``type``,
    ``args``, ...), and ``<object>.args.<name>`` when the object's type takes a parameter ``name``.
    """
    head = parts[0]
    if head == VARS:
        return True
    if len(parts) == 1:
        return head in SCHEMA
    if head == "trainer":
        return len(parts) == 2 and parts[1] in TRAINER_SCHEMA
    if ".".join(parts[:-1]) in SECTIONS:
        return parts[-1] in SECTIONS[".".join(parts[:-1])]
    if head not in OBJECT_KEYS or head == "metrics":
        return False
    if head in ("optimizer", "lr_scheduler") and len(parts) > 2 and _declares_several(data.get(head)) and parts[1] in data[head]:
        named = {**data, head: data[head][parts[1]]}  # optimizer.<name>.args.lr: a key of that optimizer's node
        return parts[2] in ("params", "every") or is_documented(named, [head, *parts[2:]], trusted)
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


def _declares_several(node: Any) -> bool:
    from trainer.optimizers import declares_several

    return declares_several(node)


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
