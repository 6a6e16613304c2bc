"""Names to objects: ``"DigitsCNN"`` or ``"package.module:Name"`` becomes the class or function.

Trust: a config the user passes is code they chose, so any importable name resolves. A config
read back from a checkpoint is data: its short names resolve in the usual modules (``NAMESPACES``),
and a full path ``"package.module:Name"`` must name a *class* defined in the project's own code
(packages in the project folder, except the engine's) or in the libraries the template builds
from (``CHECKPOINT_LIBRARIES``), not a function and not something merely imported there. Anything
else is a one-line error, decided before anything is imported from outside, and nothing is called.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path

from app.config.schema import NAMESPACES
from utils.errors import UserError, closest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENGINE_MODULES = frozenset({"base", "trainer", "utils", "logger", "train", "test", "predict", "new_project"})
"""The template's own machinery: never named by a config, so never by a checkpoint's either."""

CHECKPOINT_LIBRARIES = ("torch.nn", "torch.optim", "torchvision.models", "torchvision.transforms", "torchmetrics")
"""Library modules a checkpoint's config may name objects from (and their submodules)."""


def _public_callables(module) -> list[str]:
    return [name for name, obj in vars(module).items() if not name.startswith("_") and callable(obj)]


def is_project_module(module_name: str) -> bool:
    """Whether ``module_name`` is user code of this project: a package or module in the project
    folder (not in its virtual environment), other than the engine's. Decided without importing."""
    top = module_name.split(".")[0]
    if top in ENGINE_MODULES:
        return False
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    places = list(spec.submodule_search_locations or [])
    if not places and spec.has_location and spec.origin:
        places = [spec.origin]  # built-in and frozen modules (os, sys, builtins) have no location
    for place in places:
        path = Path(place)
        if not path.is_absolute() or not path.exists():
            continue
        path = path.resolve()
        if PROJECT_ROOT in path.parents and ".venv" not in path.relative_to(PROJECT_ROOT).parts:
            return True
    return False


def is_allowed_for_checkpoints(module_name: str) -> bool:
    library = any(module_name == lib or module_name.startswith(lib + ".") for lib in CHECKPOINT_LIBRARIES)
    return library or is_project_module(module_name)


def _untrusted_error(key: str, name: str, source: str) -> UserError:
    return UserError(
        f"{source}: {key}.type: {name!r} is outside this project's classes and the libraries it builds from "
        f"({', '.join(CHECKPOINT_LIBRARIES)}); a checkpoint is data and may not name other code. "
        f"If you trust it, pass the config again with -c, or add --trust-checkpoint"
    )


def resolve_type(key: str, name: str, source: str, trusted: bool = True) -> Callable:
    """Find a class or function by name for config key ``key`` (see ``NAMESPACES``).

    ``"package.module:Name"`` imports anything importable when ``trusted``; otherwise only what
    :func:`is_allowed_for_checkpoints` permits.
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
        if not trusted and not is_allowed_for_checkpoints(module_name):
            raise _untrusted_error(key, name, source)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UserError(
                f"{source}: {key}.type: cannot import module {module_name!r} ({exc}); check the 'package.module:Name' path"
            ) from None
        if not callable(getattr(module, attr, None)):
            raise UserError(
                f"{source}: {key}.type: module {module_name!r} has no class or function {attr!r}{closest(attr, _public_callables(module))}"
            )
        target = getattr(module, attr)
        if not trusted and not inspect.isclass(target):
            raise _untrusted_error(key, name, source)  # a checkpoint builds objects; it does not call functions by path
    else:
        target = _lookup(key, name, source)
    if not trusted and not is_allowed_for_checkpoints(getattr(target, "__module__", None) or ""):
        raise _untrusted_error(key, name, source)
    return target


def _lookup(key: str, name: str, source: str) -> Callable:
    candidates: list[str] = []
    namespaces = NAMESPACES[key.split(".")[0]]
    for module_name in namespaces:
        module = importlib.import_module(module_name)
        target = getattr(module, name, None)
        if callable(target) and not name.startswith("_"):
            return target
        candidates += _public_callables(module)
    where = ", ".join(namespaces)
    raise UserError(
        f"{source}: {key}.type: unknown name {name!r} (looked in {where}){closest(name, candidates)}; "
        f"or give a full path such as 'package.module:{name}'"
    )
