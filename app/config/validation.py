"""Checking a config once its values are resolved: every key known, every value of its kind, every
name resolvable under the trust rule, the metrics named once and the monitor a value the run logs.

:func:`validate` is what ``Config.__init__`` calls; each problem is a :class:`UserError` from
``config.error`` naming the key path and the fix. It changes the config in one way only: a key kept
from pytorch-template (``LEGACY_KEYS``) is removed, with a note for the log in ``config.notes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.config import building
from app.config.names import resolve_type
from app.config.overrides import VARS
from app.config.reading import plain_data_problem
from app.config.schema import LEGACY_KEYS, OBJECT_KEYS, SCHEMA, SECTIONS, TRAINER_SCHEMA, reserved_metric_name, section_of
from utils.errors import closest

if TYPE_CHECKING:
    from app.config.config import Config


def validate(config: Config) -> None:
    """Check ``config.data`` (already with its defaults) as the module docstring says."""
    data = config.data
    found = plain_data_problem(data)
    if found:
        raise config.error(*found)
    for key, note in LEGACY_KEYS.items():
        if key in data:
            del data[key]
            config.notes.append(f"{config.source}: {note}")
    check_keys(config)
    check_trainer_class(config)
    for key in ("arch", "data_loader", "loss"):
        if isinstance(data[key], dict):
            check_object(config, key, data[key])
    check_optimizers(config, data["optimizer"], data["lr_scheduler"])
    check_metric_entries(config)
    if isinstance(data["loss"], str):
        resolve_type("loss", data["loss"], config.source, config.trusted)
    check_metric_names(config)
    check_monitor(config)


def check_keys(config: Config) -> None:
    """Every key of the top level, of ``trainer`` and of each section (``logger``, ...) is documented,
    and its value is of the documented kind."""
    data = config.data
    for key in data:
        if key == VARS:
            if not isinstance(data[key], dict):
                raise config.error(key, f"must be a mapping of your own values (used as ${{vars.NAME}}), got {data[key]!r}")
            continue
        if key not in SCHEMA:
            hint = f"; did you mean 'trainer.{key}'?" if key in TRAINER_SCHEMA else closest(key, SCHEMA)
            hint = hint or "; your own values go under vars (used as ${vars.NAME}); see the README configuration reference"
            raise config.error(key, f"unknown top-level key{hint}")
    for key, spec in SCHEMA.items():
        if key not in data:
            raise config.error(key, "missing; every experiment needs it (see the README configuration reference)")
        problem = spec.problem(data[key])
        if problem:
            raise config.error(key, problem)
    for key, value in data["trainer"].items():
        if key not in TRAINER_SCHEMA:
            raise config.error(
                f"trainer.{key}", f"unknown key{closest(key, TRAINER_SCHEMA, 'trainer.') or '; see the README configuration reference'}"
            )
        problem = TRAINER_SCHEMA[key].problem(value)
        if problem:
            raise config.error(f"trainer.{key}", problem)
    for path, schema in SECTIONS.items():  # logger, logger.mlflow, ...: each checked as a mapping by the one above it
        section = section_of(data, path)
        for key, value in section.items() if isinstance(section, dict) else ():
            if key not in schema:
                raise config.error(f"{path}.{key}", f"unknown key{closest(key, schema, f'{path}.') or f'; {path} takes {sorted(schema)}'}")
            problem = schema[key].problem(value)
            if problem:
                raise config.error(f"{path}.{key}", problem)


def check_metric_entries(config: Config) -> None:
    """Each ``metrics`` entry is a function name or an object node (with a string ``name``, if any)."""
    for index, entry in enumerate(config.data["metrics"]):
        if isinstance(entry, dict):
            check_object(config, f"metrics.{index}", entry, "metrics")
            if not isinstance(entry.get("name", ""), str):
                raise config.error(f"metrics.{index}.name", f"must be a string, got {entry['name']!r}")
        elif isinstance(entry, str):
            resolve_type(f"metrics.{index}", entry, config.source, config.trusted)
        else:
            raise config.error(f"metrics.{index}", 'must be a function name or {"type": ..., "args": {...}, "name": ...}')


def check_metric_names(config: Config) -> None:
    """No two metrics share a name, and none takes a name the run logs itself."""
    names = config.metric_names
    if len(set(names)) != len(names):
        raise config.error("metrics", f"two metrics share a name in {names}; give one a distinct 'name'")
    for index, name in enumerate(names):
        problem = reserved_metric_name(name)
        if problem:
            raise config.error(f"metrics.{index}.name", problem)


def check_object(config: Config, key: str, node: dict, kind: str | None = None) -> None:
    """An object node ``{"type", "args", ...}``: its keys, its type resolvable, its arguments accepted."""
    kind = kind or key
    if "type" not in node:
        raise config.error(key, 'missing "type"; write {"type": "ClassName", "args": {...}}')
    if not isinstance(node["type"], str):
        raise config.error(f"{key}.type", f"must be a name string, got {node['type']!r}")
    for extra in node:
        if extra not in OBJECT_KEYS[kind]:
            hint = closest(extra, OBJECT_KEYS[kind], f"{key}.") or f"; {key} takes only {sorted(OBJECT_KEYS[kind])}"
            raise config.error(f"{key}.{extra}", f"unknown key{hint}")
    args = node.get("args") or {}
    if not isinstance(args, dict):
        raise config.error(f"{key}.args", f"must be a mapping of argument names to values, got {args!r}")
    if kind == "lr_scheduler" and node.get("interval", "epoch") not in ("epoch", "step"):
        raise config.error(f"{key}.interval", f'must be "epoch" or "step", got {node["interval"]!r}')
    if kind == "optimizer":
        check_param_groups(config, node.get("param_groups") or [], key)
    building.check_arguments(config, key, resolve_type(key, node["type"], config.source, config.trusted), args)
    check_nested_types(config, f"{key}.args", args)


def check_nested_types(config: Config, path: str, value: Any) -> None:
    """Object nodes inside arguments (``data_loader.args.transforms``' lists): each full-path
    name is resolved under the trust rule here, before the object that will import it is built."""
    if isinstance(value, dict):
        if isinstance(value.get("type"), str) and set(value) <= {"type", "args"}:
            if ":" in value["type"] or ".transforms." in f".{path}.":
                resolve_type(path, value["type"], config.source, config.trusted)
        for name, item in value.items():
            check_nested_types(config, f"{path}.{name}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_nested_types(config, f"{path}.{index}", item)


def check_trainer_class(config: Config) -> None:
    """``trainer.type`` names the template's Trainer or a subclass; ``trainer.args`` are its own parameters."""
    from trainer import Trainer

    name = config.data["trainer"]["type"]
    target = resolve_type("trainer", name, config.source, config.trusted)
    if not (isinstance(target, type) and issubclass(target, Trainer)):
        raise config.error("trainer.type", f"{name!r} is not a subclass of trainer.Trainer; subclass it to change the train step")
    building.check_arguments(config, "trainer", target, config.data["trainer"]["args"], code_kwargs=building.trainer_parameters())


def check_param_groups(config: Config, groups: Any, key: str = "optimizer") -> None:
    if not isinstance(groups, list):
        raise config.error(f"{key}.param_groups", "must be a list of {params: prefix or [prefixes], ...}")
    for index, group in enumerate(groups):
        if not isinstance(group, dict) or "params" not in group:
            raise config.error(f"{key}.param_groups.{index}", 'needs "params": a parameter-name prefix or a list of them')


def check_optimizers(config: Config, optimizer: dict, scheduler: Any) -> None:
    """One optimizer node, or a mapping of names to them (``trainer/optimizers.py``), each with
    ``params`` and ``every``; ``lr_scheduler`` then null or a mapping of some of those names."""
    from trainer.optimizers import declares_several

    if not declares_several(optimizer):
        check_object(config, "optimizer", optimizer)
        if isinstance(scheduler, dict):
            if declares_several(scheduler):
                first = next(iter(scheduler))
                raise config.error(f"lr_scheduler.{first}", "names an optimizer, but the config declares one optimizer (no names); write lr_scheduler as {type, args, interval}")
            check_object(config, "lr_scheduler", scheduler)
        return
    for name, node in optimizer.items():
        key = f"optimizer.{name}"
        if not name.isidentifier():
            raise config.error(key, f"{name!r} cannot name an optimizer; use a Python identifier such as 'generator'")
        spec = {k: v for k, v in node.items() if k not in ("params", "every")}
        check_object(config, key, spec, "optimizer")
        params = node.get("params")
        prefixes = [params] if isinstance(params, str) else params
        if not isinstance(prefixes, list) or not prefixes or not all(isinstance(p, str) for p in prefixes):
            raise config.error(f"{key}.params", f'needs the module-name prefix of the parameters it owns ("generator." or a list of them), got {params!r}')
        every = node.get("every", 1)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise config.error(f"{key}.every", f"must be a whole number >= 1 (this optimizer steps at every every-th engine step), got {every!r}")
    if scheduler is None:
        return
    if not declares_several(scheduler):
        raise config.error("lr_scheduler", f"the config declares several optimizers ({', '.join(optimizer)}): name each one's schedule, {{\"{next(iter(optimizer))}\": {{type, args, interval}}}}, or null")
    for name, node in scheduler.items():
        if name not in optimizer:
            raise config.error(f"lr_scheduler.{name}", f"names no optimizer{closest(name, optimizer, 'lr_scheduler.') or ''}; the optimizers are {', '.join(optimizer)}")
        check_object(config, f"lr_scheduler.{name}", node, "lr_scheduler")


def check_monitor(config: Config) -> None:
    """``trainer.monitor`` names a value the run logs (a metric's ``<name>_<key>`` waits for the pre-flight batch)."""
    _, metric = config.monitor()
    if metric is None:
        return
    produced = ["loss", *config.metric_names]
    produced += [f"val_{name}" for name in produced]
    # A metric returning a mapping logs <name>_<key>: such names are checked on the pre-flight batch.
    if metric not in produced and not any(metric.startswith(f"{name}_") for name in produced):
        raise config.error("trainer.monitor", f"the run does not produce {metric!r}{closest(metric, produced)}; it logs {produced}")
