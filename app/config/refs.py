"""``${key.path}`` references: one number in one place.

A string value that is exactly ``"${key.path}"`` becomes that key's value, whatever its type
(``"num_classes": "${arch.args.num_classes}"`` is the integer); a reference inside a longer
string is replaced by the referenced value's text (``"run-${seed}"``), which must then be a
string, number, boolean or null. List items are named by their index (``${metrics.0.name}``).
References are resolved after the defaults and the command-line overrides, so
``arch.args.num_classes=3`` on the command line reaches every key that refers to it, and the
run's saved config holds the resolved values. ``\\${`` writes a literal ``${``.

An unknown key and a cycle (keys that refer to each other) are one-line errors naming both keys.

**Bounded.** References repeated inside references grow like YAML aliases do: 22 keys, each
``"${previous}${previous}"``, would make a 256 MiB string. Every use of a reference is charged
its size (characters of text, one per value) before the text is joined or the value copied, and
the whole expansion may cost at most :data:`MAX_EXPANDED`: past it, one line names the key.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from utils.errors import UserError

REFERENCE = re.compile(r"(?<!\\)\$\{([^{}]*)\}")
ESCAPED = "\\${"
MAX_EXPANDED = 1_000_000
"""What the references of one config may expand to: characters of text plus values (a config's
own text is far below it; a config of references that double each other passes it in 14 steps, and copying its values stays under a second)."""


def resolve_references(data: dict, source: str) -> dict:
    """``data`` with every reference replaced by its value (``data`` itself is not changed)."""
    resolver = _Resolver(data, source)
    return resolver.value(data, "")


def escape_literals(value: Any) -> Any:
    """The inverse of resolution for literal text: ``${`` in resolved strings written as ``\\${``,
    so a saved config reads back as the same values."""
    if isinstance(value, str):
        return value.replace("${", ESCAPED)
    if isinstance(value, dict):
        return {key: escape_literals(item) for key, item in value.items()}
    if isinstance(value, list):
        return [escape_literals(item) for item in value]
    return value


class _Resolver:
    def __init__(self, data: dict, source: str):
        self.data, self.source = data, source
        self.done: dict[str, Any] = {}
        self.costs: dict[str, int] = {}  # the size of each resolved key's value (see size_of)
        self.spent = 0  # what the uses of references have added, charged before each is made
        self.active: list[str] = []  # keys being resolved, outermost first: a repeat is a cycle

    def value(self, value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {key: self.value(item, _join(path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item, _join(path, str(index))) for index, item in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self.text(value, path)
        return value

    def text(self, text: str, path: str) -> Any:
        whole = REFERENCE.fullmatch(text)
        if whole:
            found = self.target(whole.group(1), path)
            self.charge(self.costs[whole.group(1).strip()], whole.group(1), path)
            return copy.deepcopy(found)
        pieces: list[str] = []
        end = 0
        for match in REFERENCE.finditer(text):
            found = self.target(match.group(1), path)
            if isinstance(found, (dict, list)):
                raise UserError(
                    f"{self.source}: {path}: ${{{match.group(1)}}} is a {'mapping' if isinstance(found, dict) else 'list'} "
                    f"and cannot be part of a string; make the value exactly \"${{{match.group(1)}}}\""
                )
            piece = found if isinstance(found, str) else json.dumps(found)
            self.charge(len(piece), match.group(1), path)  # before the joined text exists
            pieces += [text[end : match.start()], piece]
            end = match.end()
        pieces.append(text[end:])
        return "".join(pieces).replace(ESCAPED, "${")

    def charge(self, cost: int, reference: str, path: str) -> None:
        self.spent += cost
        if self.spent > MAX_EXPANDED:
            raise UserError(
                f"{self.source}: {path}: ${{{reference}}} makes the references expand to more than {MAX_EXPANDED:,} characters and "
                f"values (references repeated inside references); write the values out"
            )

    def target(self, reference: str, path: str) -> Any:
        """The resolved value of the key ``reference`` names, for the value at ``path``."""
        key = reference.strip()
        if key in self.done:
            return self.done[key]
        if key in self.active:
            loop = " -> ".join([*self.active[self.active.index(key) :], key])
            raise UserError(f"{self.source}: {path}: ${{{reference}}} refers back to itself ({loop}); break the cycle")
        self.active.append(key)  # before the walk: a path through a reference may lead back here
        try:
            node: Any = self.data
            parts = key.split(".") if key else [""]
            for depth, part in enumerate(parts):
                inner = REFERENCE.fullmatch(node) if isinstance(node, str) else None
                if inner:  # the path goes on through a reference: ${x.z} where x is "${y}" walks into y
                    node = self.target(inner.group(1), ".".join(parts[:depth]))
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                    node = node[int(part)]
                else:
                    where = ".".join(parts[:depth]) or "the top level"
                    raise UserError(f"{self.source}: {path}: ${{{reference}}} refers to {key!r}, which the config does not have (nothing at {part!r} in {where})")
            resolved = self.value(node, key)
        finally:
            self.active.pop()
        self.done[key] = resolved
        self.costs[key] = size_of(resolved)
        return resolved


def size_of(value: Any) -> int:
    """Characters of text plus one per value in ``value`` (walked without recursion)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        total += len(item) if isinstance(item, str) else 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
