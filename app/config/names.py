"""Names to objects: ``"DigitsCNN"`` or ``"package.module:Name"`` becomes the class or function,
and the trust rule that decides what a checkpoint's config may name.

**Trust.** A config you pass with ``-c`` is code you chose: any importable name resolves. A
config read back from a checkpoint is data: it may name a class or function only when it is
*defined* in

- this project's source packages (``model`` and ``data_loader`` unless ``pyproject.toml`` lists
  others under ``[tool.pytorch-template] project-packages``), never a data, output, test or
  benchmark folder, whatever lies at the project root;
- the libraries the template builds from (``torch.nn``, ``torch.optim``, ``torchvision.models``,
  ``torchvision.transforms``, ``torchmetrics``, and their submodules; ``[tool.pytorch-template]
  libraries`` replaces the list), by their public names (no ``_``-prefixed module or name);
- the template's ``trainer`` package, classes only (the default ``trainer.type`` and its parts).

Anything else is refused in one line before any of it is imported (a module's name decides
before it is imported; the object's own ``__module__`` decides after), unless the user passes
``--trust-checkpoint``. What a ``-c`` config would name outside these is refused when a run
starts (``Config.check_checkpoints_resumable``), so every run's own checkpoints can be resumed,
tested and predicted by the command the run prints.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.config.schema import NAMESPACES
from utils.errors import UserError, closest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PYPROJECT_TABLE = "pytorch-template"
DEFAULT_PROJECT_PACKAGES = ("model", "data_loader")
DEFAULT_LIBRARIES = ("torch.nn", "torch.optim", "torchvision.models", "torchvision.transforms", "torchmetrics")
TEMPLATE_CLASSES = "trainer"
"""The template's package whose classes a checkpoint may name (``trainer.type``'s default ``Trainer``)."""


class UntrustedName(UserError):
    """A checkpoint's config names code outside what the trust rule allows."""


@dataclass(frozen=True)
class TrustRule:
    """What a checkpoint's config may name: the project's own source packages and the libraries it builds from
    (pyproject's ``[tool.pytorch-template]``), decided before anything is imported."""

    project_packages: tuple[str, ...]
    libraries: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"this project's source packages ({', '.join(self.project_packages)}), the public names of the libraries it builds from "
            f"({', '.join(self.libraries)}) or the classes of its {TEMPLATE_CLASSES} package"
        )


@functools.cache
def trust_rule() -> TrustRule:
    """The rule, with the lists ``pyproject.toml`` may set under ``[tool.pytorch-template]``."""
    table = _pyproject_table()
    packages = table.get("project-packages", DEFAULT_PROJECT_PACKAGES)
    libraries = table.get("libraries", DEFAULT_LIBRARIES)
    for key, value in (("project-packages", packages), ("libraries", libraries)):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise UserError(f"pyproject.toml: [tool.{PYPROJECT_TABLE}] {key} must be a list of module names, got {value!r}")
    return TrustRule(tuple(packages), tuple(libraries))


def _pyproject_table() -> dict:
    path = PROJECT_ROOT / "pyproject.toml"
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle).get("tool", {}).get(PYPROJECT_TABLE, {})
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path}: cannot read the trust lists ({exc}); fix pyproject.toml") from None


def _public_callables(module) -> list[str]:
    return [name for name, obj in vars(module).items() if not name.startswith("_") and callable(obj)]


def is_project_module(module_name: str) -> bool:
    """Whether ``module_name`` belongs to one of the project's source packages, found in the project
    folder (not in its virtual environment, not an installed package of the same name). Decided
    without importing anything."""
    top = module_name.split(".")[0]
    if top not in trust_rule().project_packages and top != TEMPLATE_CLASSES:
        return False
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    places = list(spec.submodule_search_locations or []) if spec is not None else []
    for place in places:
        path = Path(place)
        if path.is_absolute() and path.exists() and path.resolve().parent == PROJECT_ROOT:
            return True
    return False


def _library(module_name: str) -> bool:
    return any(module_name == lib or module_name.startswith(lib + ".") for lib in trust_rule().libraries)


def module_may_be_named(module_name: str, attr: str = "") -> bool:
    """The check made before a checkpoint's ``package.module:Name`` is imported. In a library only
    its public names count: a private module or name is its own machinery, not what it offers (some
    import a module named by an argument, e.g. ``torch.nn.attention._fa3``)."""
    public = not any(part.startswith("_") for part in [*module_name.split("."), attr] if part)
    return (_library(module_name) and public) or is_project_module(module_name)


def object_may_be_named(target: object) -> bool:
    """The check made on what a name resolved to: where it is defined."""
    module_name = getattr(target, "__module__", None) or ""
    if module_name.split(".")[0] == TEMPLATE_CLASSES:
        return inspect.isclass(target) and is_project_module(module_name)
    return callable(target) and (_library(module_name) or is_project_module(module_name))


def untrusted_error(key: str, name: str, source: str) -> UntrustedName:
    return UntrustedName(
        f"{source}: {key}.type: {name!r} is not defined in {trust_rule().describe()}; a checkpoint is data and may name "
        f"only those. If you trust this checkpoint, add --trust-checkpoint"
    )


def resolve_type(key: str, name: str, source: str, trusted: bool = True) -> Callable:
    """Find a class or function by name for config key ``key`` (see ``NAMESPACES``).

    ``"package.module:Name"`` imports anything importable when ``trusted``; otherwise only what
    the trust rule (module docstring) allows, decided before the import.
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
        if not trusted and not module_may_be_named(module_name, attr):
            raise untrusted_error(key, name, source)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise import_error(key, module_name, source, exc) from None
        if not callable(getattr(module, attr, None)):
            raise UserError(
                f"{source}: {key}.type: module {module_name!r} has no class or function {attr!r}{closest(attr, _public_callables(module))}"
            )
        target = getattr(module, attr)
    else:
        target = _lookup(key, name, source)
    if not trusted and not object_may_be_named(target):
        raise untrusted_error(key, name, source)
    return target


def missing_package(exc: BaseException) -> str | None:
    """The top-level package whose absence raised ``exc`` (a ``ModuleNotFoundError`` for a package
    this environment does not have), or None: a missing submodule of an installed package, or
    a name that does not import from one, is another mistake."""
    name = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if not name:
        return None
    top = name.split(".")[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    return top if found is None else None


def import_error(key: str, module_name: str, source: str, exc: ImportError) -> UserError:
    """The one line for a module that does not import: a wrong path, or a package it needs that is not installed."""
    missing = missing_package(exc)
    if missing and module_name.split(".")[0] != missing:
        return UserError(
            f"{source}: {key}.type: module {module_name!r} needs the package {missing!r}, which is not installed; install it "
            f"(pip install {missing}), or name another"
        )
    return UserError(f"{source}: {key}.type: cannot import module {module_name!r} ({exc}); check the 'package.module:Name' path")


def namespace_of(key: str) -> tuple[str, ...]:
    """Where short names of config key ``key`` are looked up (``metrics.2`` -> the metrics modules)."""
    parts = key.split(".")
    if "transforms" in parts:
        return NAMESPACES["transforms"]
    return NAMESPACES[parts[0]]


def _lookup(key: str, name: str, source: str) -> Callable:
    candidates: list[str] = []
    namespaces = namespace_of(key)
    for module_name in namespaces:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name not in (module_name, module_name.split(".")[0]):
                raise  # the module exists and fails inside: the user's bug, shown as one
            continue  # a project without it (its model/metric.py deleted): the next place
        target = getattr(module, name, None)
        if callable(target) and not name.startswith("_"):
            return target
        candidates += _public_callables(module)
    where = ", ".join(namespaces)
    raise UserError(
        f"{source}: {key}.type: unknown name {name!r} (looked in {where}){closest(name, candidates)}; "
        f"or give a full path such as 'package.module:{name}'"
    )
