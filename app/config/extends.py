"""A config that extends others: the chain of files, merged, with where every value came from.

A config file may name base configs in a top-level ``extends`` (a path or a list of paths,
relative to the file; JSON and YAML mix). The order, first to last, each later one over the ones
before it:

1. the bases, in the order listed, each itself resolved first (bases may extend bases);
2. the file's own keys: a mapping merges into the base's mapping key by key, any other value
   (a scalar, a list, null) replaces what was there; ``{"_replace_": true, ...}`` replaces a whole
   mapping instead of merging (a new ``arch`` whose ``args`` inherit nothing); ``{"_delete_": true}``
   deletes the key (a replaced mapping replaces again wherever its file is merged: over an
   earlier base of the same file too);
3. the file's ``patch``: a mapping of key paths to values, applied in order, in the command line's
   syntax (``metrics[name=f1].args.average: micro``, ``metrics[+]: {...}``, ``~lr_scheduler: null``;
   ``app/config/overrides.py``);

then the defaults, the command-line overrides and last the ``${references}`` (``app/config/config.py``),
so a reference in a base sees the variant's value. The directive keys (``extends``, ``patch`` at
the top level; ``_replace_``, ``_delete_`` in a mapping) are not config keys and never reach the
resolved config. A mapping written over a value that is not a mapping (nor null) is refused: say
``_replace_`` to mean it.

Every value's origin is kept in a map from dotted key path to ``file:line`` (YAML lines from the
parser's marks, JSON lines from a scan of the text) or the override that set it; the chain of
files with their sha256 hashes goes into the run's manifest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.config.overrides import mark, parse_path, patch
from app.config.reading import ConfigLoader, read_config_file
from utils.errors import UserError

EXTENDS, PATCH, REPLACE, DELETE = "extends", "patch", "_replace_", "_delete_"
MAX_FILES = 64
"""Bases in one chain, at most: a deeper chain is a mistake (or a file crafted to be slow)."""


@dataclass
class Chain:
    """A config file resolved through its bases: ``data`` (plain, no directives), ``origins``
    (dotted key path -> ``file:line``) and ``files`` (``{path, sha256}``, bases first)."""

    data: dict
    origins: dict[str, str] = field(default_factory=dict)
    files: list[dict] = field(default_factory=list)


def load_chain(path: str | Path) -> Chain:
    """The config at ``path`` with every base it extends merged in (see the module's docstring)."""
    files: dict[str, dict] = {}
    data, origins, _ = _load(Path(path), {}, files, [0])
    return Chain(data, origins, list(files.values()))


def read_config(path: str | Path) -> dict:
    """The plain data of the config at ``path`` through its bases: what a driver passes on as a
    trial's ``config_data`` (``Config.from_file`` keeps the origins too)."""
    return load_chain(path).data


def _label(path: Path) -> str:
    return os.path.normpath(path)


def _load(path: Path, stack: dict[Path, str], files: dict[str, dict], loads: list[int]) -> tuple[dict, dict, set[str]]:
    """(data, origins, the key paths a ``_replace_`` replaced: merged over an earlier base, they replace it too).
    ``stack``: the files being read, outermost first (their real paths, and their labels)."""
    label = _label(path)
    real = path.resolve()
    if real in stack:
        chain = list(stack)
        cycle = " -> ".join([*(stack[p] for p in chain[chain.index(real) :]), label])
        raise UserError(f"{label}: extends: a cycle of bases ({cycle}); remove one of these extends")
    loads[0] += 1
    if loads[0] > MAX_FILES:
        raise UserError(f"{label}: extends: more than {MAX_FILES} config files read for one chain; merge some of them")
    try:
        raw = read_config_file(path)
    except UserError as exc:
        if stack and "the top level of a config must be a mapping" in str(exc):
            raise UserError(
                f"{list(stack.values())[-1]}: extends: {label} is not a config (its top level is not a mapping of keys); extend a config file"
            ) from None
        raise
    text = path.read_bytes()
    lines = _lines(path, text.decode("utf-8", "replace"))

    def origin(keys: tuple) -> str:
        line = lines.get(keys)
        return f"{label}:{line}" if line else label

    bases = raw.pop(EXTENDS, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise UserError(f"{label}: extends: must be a file path or a list of paths (relative to {label}), got {bases!r}")
    patches = raw.pop(PATCH, {})
    if not isinstance(patches, dict):
        raise UserError(
            f'{label}: patch: must be a mapping of key paths to values (e.g. "metrics[name=f1].args.average": "micro"), got {patches!r}'
        )
    data: dict = {}
    origins: dict[str, str] = {}
    replaced: set[str] = set()
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            what = "is a folder" if base_path.is_dir() else "does not exist"
            raise UserError(f"{label}: extends: {base!r} {what} (looked for {_label(base_path)}); fix the path, relative to {label}")
        base_data, base_origins, base_replaced = _load(base_path, {**stack, real: label}, files, loads)
        _merge(data, origins, base_data, base_origins, _label(base_path), (), base_replaced, replaced)
    files.setdefault(str(real), {"path": label, "sha256": hashlib.sha256(text).hexdigest()})
    _merge(data, origins, raw, origin, label, (), set(), replaced)
    for key, value in patches.items():
        where = f"{label}: patch: {key!r}"
        delete = key.startswith("~")
        if delete and value is not None:
            raise UserError(f"{where}: ~ deletes a key and takes no value; write null")
        steps = parse_path(key[1:] if delete else key, where)
        patch(data, steps, value, where, delete=delete, origins=origins, origin=origin((PATCH, key)))
    return data, origins, replaced


def _merge(
    dst: dict, origins: dict, src: dict, origin_of: Any, src_label: str, keys: tuple, src_replaced: set[str], replaced: set[str]
) -> None:
    """Merge mapping ``src`` (from ``src_label``) into ``dst`` at ``keys``. ``origin_of(keys)`` is
    the origin of a file's value, or (for a resolved base) the base's whole origins map;
    ``src_replaced``: the paths of a resolved base that replace rather than merge; ``replaced``
    collects them for the file being read."""
    for key, value in src.items():
        here = (*keys, key)
        path = ".".join(map(str, here))
        if path in src_replaced:
            value = {REPLACE: True, **value}
        if isinstance(value, dict) and (DELETE in value or REPLACE in value):
            flag = DELETE if DELETE in value else REPLACE
            if value[flag] is not True:
                raise UserError(f"{src_label}: {path}.{flag}: must be true, got {value[flag]!r}")
            if flag == DELETE:
                if len(value) > 1:
                    raise UserError(
                        f"{src_label}: {path}: {DELETE} deletes the key, so it stands alone; remove the other keys, or use {REPLACE}"
                    )
                if key not in dst:
                    raise UserError(f"{src_label}: {path}: {DELETE} deletes a key the bases do not have; remove it, or fix the key")
                del dst[key]
                mark(origins, path, None, None)
                continue
            dst[key] = {}
            mark(origins, path, None, None)
            replaced.add(path)
            _merge(dst[key], origins, {k: v for k, v in value.items() if k != REPLACE}, origin_of, src_label, here, src_replaced, replaced)
            continue
        if isinstance(value, dict):
            if key in dst and dst[key] is not None and not isinstance(dst[key], dict):
                raise UserError(
                    f"{src_label}: {path}: a mapping cannot merge into {_short(dst[key])}, set by {_where(origins, path)}; "
                    f'to replace that value, write "{REPLACE}": true in this {path}, or write a value that is not a mapping'
                )
            if not isinstance(dst.get(key), dict):
                dst[key] = {}
                mark(origins, path, None, None)
            if not value:
                origins[path] = _origin(origin_of, here, path)
            _merge(dst[key], origins, value, origin_of, src_label, here, src_replaced, replaced)
            continue
        dst[key] = copy.deepcopy(value)
        mark(origins, path, None, None)
        if callable(origin_of):
            origins[path] = origin_of(here)
            if isinstance(value, list):  # an item's own line, for a list that a later patch changes in part
                for index, item in enumerate(value):
                    if not isinstance(item, (dict, list)):
                        continue
                    origins[f"{path}.{index}"] = origin_of((*here, index))
        else:
            origins.update({k: v for k, v in origin_of.items() if k == path or k.startswith(f"{path}.")})


def _origin(origin_of: Any, keys: tuple, path: str) -> str:
    if callable(origin_of):
        return origin_of(keys)
    return origin_of.get(path, "")


def _where(origins: dict, path: str) -> str:
    found = [origin for key, origin in origins.items() if key == path or key.startswith(f"{path}.")]
    return found[0] if found else "a base"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- lines ----------------------------------------------------------------------------------------


def _lines(path: Path, text: str) -> dict[tuple, int]:
    """The line each key (and each list item) of a config file starts on, by its keys' tuple.

    YAML: the parser's marks. JSON: a scan of the text that follows strings and brackets (the
    file has already parsed, so the scan can trust its shape). Empty when the text cannot be
    scanned: an origin is then the file without a line, never a wrong line.
    """
    try:
        if path.suffix.lower() == ".json":
            return _json_lines(text)
        node = yaml.compose(text, Loader=ConfigLoader)
    except (yaml.YAMLError, ValueError, IndexError, RecursionError):
        return {}
    found: dict[tuple, int] = {}
    todo = [((), node)]
    while todo and len(found) < 100_000:
        keys, node = todo.pop()
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    found.setdefault((*keys, key_node.value), key_node.start_mark.line + 1)
                    todo.append(((*keys, key_node.value), value_node))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                found.setdefault((*keys, index), item.start_mark.line + 1)
                todo.append(((*keys, index), item))
    return found


def _json_lines(text: str) -> dict[tuple, int]:
    found: dict[tuple, int] = {}
    stack: list[list] = []  # [keys, is_mapping, next index or pending key, expecting a key]
    line, at = 1, 0
    decoder = json.JSONDecoder()
    while at < len(text):
        char = text[at]
        if char == "\n":
            line += 1
        if char in " \t\r\n,:":
            if char == "," and stack and stack[-1][1]:
                stack[-1][3] = True
            at += 1
            continue
        if char in "}]":
            stack.pop()
            at += 1
            continue
        top = stack[-1] if stack else None
        if top is not None and top[1] and top[3] and char == '"':
            key, end = decoder.raw_decode(text, at)
            top[2], top[3] = key, False
            found[(*top[0], key)] = line
            at = end
            continue
        keys: tuple = ()
        if top is not None:
            if top[1]:
                keys = (*top[0], top[2])
            else:
                keys = (*top[0], top[2])
                found[keys] = line
                top[2] += 1
        if char in "{[":
            stack.append([keys, char == "{", 0, True])
            at += 1
            continue
        _, end = decoder.raw_decode(text, at)
        line += text.count("\n", at, end)
        at = end
    return found
