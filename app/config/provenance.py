"""Where each value of a resolved config came from, as ``--print-config`` shows it.

One line per value: ``key.path: value  # origin``, where the origin is the ``file:line`` or the
command-line override that set it, ``default`` for a documented default, and a value resolved
from a ``${reference}`` names the reference too. List items that are mappings (metrics,
transforms) are shown key by key, so a patched argument shows its own origin.
"""

from __future__ import annotations

import json
from typing import Any

from app.config.refs import REFERENCE

DEFAULT = "default"


def references_in(data: Any, path: str = "") -> dict[str, str]:
    """Dotted key path -> the text of every string value holding a ``${reference}``."""
    if isinstance(data, dict):
        return {k: v for key, item in data.items() for k, v in references_in(item, f"{path}.{key}" if path else key).items()}
    if isinstance(data, list):
        return {k: v for index, item in enumerate(data) for k, v in references_in(item, f"{path}.{index}" if path else str(index)).items()}
    return {path: data} if isinstance(data, str) and REFERENCE.search(data) else {}


def leaves(data: Any, path: str = "") -> list[tuple[str, Any]]:
    """``(dotted path, value)`` of every value shown on a line of its own (see the module's docstring)."""
    if isinstance(data, dict) and data:
        return [leaf for key, item in data.items() for leaf in leaves(item, f"{path}.{key}" if path else key)]
    if isinstance(data, list) and any(isinstance(item, dict) for item in data):
        return [leaf for index, item in enumerate(data) for leaf in leaves(item, f"{path}.{index}")]
    return [(path, data)]


def origin_of(origins: dict[str, str], path: str) -> str:
    """The origin recorded for ``path`` or the nearest key above it; ``default`` when none is."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:end]))
        if found:
            return found
    return DEFAULT


def render(data: dict, origins: dict[str, str], references: dict[str, str], source: str, files: list[dict]) -> str:
    """The text ``--print-config`` prints for the resolved ``data``."""
    rows = [(f"{path}: {json.dumps(value)}", origin_of(origins, path), references.get(path)) for path, value in leaves(data)]
    width = min(max((len(text) for text, _, _ in rows), default=0), 72)
    head = [f"# {source}, resolved; after each value, the file:line or override that set it ({DEFAULT}: a documented default)"]
    head += [f"# file {entry['path']} sha256 {entry['sha256'][:16]}" for entry in files]
    body = [f"{text.ljust(width)}  # {origin}" + (f" as {reference}" if reference else "") for text, origin, reference in rows]
    return "\n".join([*head, *body]) + "\n"
