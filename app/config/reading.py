"""Reading a config file: JSON, or YAML with YAML 1.2 scalars, as plain data only.

A config is trusted like code (it names classes to import), yet it is read with ``json.loads`` /
a ``yaml.SafeLoader`` and nothing else, and whatever is not plain data (a YAML timestamp, set or
binary tag, a NaN, a non-string key) is refused with the key path, before anything is built.
A key given twice in one mapping (YAML or JSON) is refused too, naming the key: both parsers
would otherwise keep the last one silently. YAML merge keys (``<<: *base``) still override.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from utils.errors import UserError
from utils.files import read_text
from utils.nested import shape_problem


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 scalars, so that values mean what they look like.

    Plain YAML 1.1 reads ``off``/``no``/``yes`` as booleans (``monitor: off`` would be False),
    ``1e-3`` as a string, ``1:30`` as 90 and ``2024-01-01`` as a date; here only ``true``/``false``
    are booleans, ``1e-3`` is a float, and the rest stay strings.
    """


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping; ``key`` and ``lines`` (YAML: 1-based, else empty) for the message."""

    def __init__(self, key: str, lines: tuple[int, ...] = (), mark=None):
        super().__init__(None, None, f"key {key!r} is given twice in one mapping", mark)
        self.key, self.lines = key, lines


def _refuse_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """``SafeLoader.construct_mapping`` after checking the node's own keys (merged ones may repeat them)."""
    first: dict[tuple, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        ident, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
        if ident in first:
            raise DuplicateKey(key_node.value, (first[ident], line), key_node.start_mark)
        first[ident] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


ConfigLoader.construct_mapping = _refuse_duplicate_keys  # type: ignore[method-assign]


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    data: dict = {}
    for key, value in pairs:
        if key in data:
            raise DuplicateKey(key)
        data[key] = value
    return data


_REPLACED = {f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp")}
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789")
)
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`ConfigLoader` (safe: plain data only)."""
    return yaml.load(text, Loader=ConfigLoader)  # ConfigLoader is a SafeLoader: plain data only


def plain_data_problem(value: Any, path: str = "", inside: frozenset = frozenset()) -> tuple[str, str] | None:
    """``(key path, problem)`` for the first value that is not plain config data, or None.

    Plain data is mappings with string keys, lists, strings, booleans, integers, finite-or-infinite
    floats (never NaN) and null, nested without cycles (a YAML alias may not contain itself).
    """
    where = path or "(top level)"
    if isinstance(value, (dict, list)):
        if id(value) in inside:
            return where, "a YAML alias contains itself; write the value out"
        inside = inside | {id(value)}
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return where, f"keys must be strings, got {type(key).__name__} {key!r}; quote it"
            found = plain_data_problem(item, f"{path}.{key}" if path else key, inside)
            if found:
                return found
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = plain_data_problem(item, f"{path}.{index}" if path else str(index), inside)
            if found:
                return found
        return None
    if isinstance(value, float) and math.isnan(value):
        return where, "NaN is not a usable value; write a number"
    if value is None or isinstance(value, (str, bool, int, float)):
        return None
    return where, f"{type(value).__name__} values are not plain data (YAML tags such as !!timestamp, !!set or !!binary); write a string, number, list or mapping"


def read_config_file(path: str | Path, kind: str = "config", flag: str = "-c", keys: str = "name, arch, data_loader, ...") -> dict:
    """Read a ``.json``, ``.yaml`` or ``.yml`` config (or another file of that kind: a sweep's search
    space) as plain data: a regular file of bounded size, of bounded depth and expanded size (see
    :func:`shape_problem`). ``kind``, ``flag`` and ``keys`` only word the errors."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise UserError(f"{path}: a {kind} must be a .json, .yaml or .yml file")
    text = read_text(path, f"{kind} file", f"pass an existing file with {flag}")
    try:
        data = json.loads(text, object_pairs_hook=_json_object) if suffix == ".json" else load_yaml(text)
    except DuplicateKey as exc:
        lines = f" (lines {exc.lines[0]} and {exc.lines[1]})" if exc.lines else ""
        raise UserError(f"{path}: key {exc.key!r} is given twice in one mapping{lines}; keep one (the reader never picks one silently)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; fix the syntax there") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise UserError(f"{path}: invalid YAML{where}: {problem}; fix the syntax there") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a {kind}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level of a {kind} must be a mapping of keys ({keys})")
    check_shape(data, str(path))
    return data


def check_shape(value: Any, source: str) -> None:
    problem = shape_problem(value)
    if problem:
        raise UserError(f"{source}: not a usable config: {problem}; write the values out")
