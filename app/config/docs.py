"""The README's configuration reference, generated from the declarations so the two cannot drift."""

from __future__ import annotations

import json

from app.config.schema import NAMESPACES, OBJECT_KEY_DOCS, REQUIRED, SCHEMA, TRAINER_SCHEMA
from base.settings import Setting, type_names


def _default(spec: Setting) -> str:
    return "required" if spec.default is REQUIRED else f"`{json.dumps(spec.default)}`"


def reference_markdown() -> str:
    """The key tables: every top-level and ``trainer.*`` key, object-node keys, and lookup modules."""
    rows = [("", key, spec) for key, spec in SCHEMA.items()]
    rows += [("trainer.", key, spec) for key, spec in TRAINER_SCHEMA.items()]
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{prefix}{key}` | {type_names(spec.types)} | {_default(spec)} | {spec.doc} |" for prefix, key, spec in rows]
    lines += ["", "Object nodes (`arch`, `data_loader`, `loss`, `metrics` entries, `optimizer`, `lr_scheduler`):", ""]
    lines += ["| node key | where, default and meaning |", "| --- | --- |"]
    lines += [f"| `{key}` | {doc} |" for key, doc in OBJECT_KEY_DOCS.items()]
    lines += ["", "Where `type` is looked up:", ""]
    lines += [f"- `{key}`: {', '.join(f'`{m}`' for m in modules)}" for key, modules in NAMESPACES.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
