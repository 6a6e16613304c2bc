"""The validated experiment config: plain data, the file it came from, and whether it is trusted."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from app.config import building
from app.config.extends import EXTENDS, PATCH, Chain, load_chain
from app.config.names import UntrustedName, resolve_type, trust_rule
from app.config.overrides import VARS, apply_override
from app.config.provenance import leaves, references_in, render
from app.config.reading import check_shape, plain_data_problem
from app.config.refs import escape_literals, resolve_references
from app.config.schema import (
    LEGACY_KEYS,
    OBJECT_KEYS,
    REQUIRED,
    SCHEMA,
    SECTIONS,
    TRAINER_SCHEMA,
    metric_name,
    reserved_metric_name,
    section_of,
    with_defaults,
)
from base.settings import SETTINGS, TrainerSettings, parse_monitor
from utils.errors import UserError, closest


class Config:
    """A validated experiment config.

    ``trusted`` is False for a config read back from a checkpoint (and not passed again with
    ``-c``): its names then resolve only to the project's own code and the libraries the template
    builds from (``app/config/names.py``). ``notes`` are one-line remarks for the log (a key
    from pytorch-template that was accepted and ignored, say).
    """

    def __init__(self, data: dict, source: str = "config", trusted: bool = True):
        self.source = source
        self.trusted = trusted
        self.notes: list[str] = []
        self.origins: dict[str, str] = {}
        """Dotted key path -> the ``file:line`` or override that set it (absent: a default); see ``app/config/extends.py``."""
        self.files: list[dict] = []
        """The chain of config files read, bases first: ``{path, sha256}`` each (for the manifest)."""
        self.references: dict[str, str] = {}
        """Dotted key path -> the ``${reference}`` text its value was resolved from."""
        self.data = with_defaults(data)
        self._validate()
        self.settings = TrainerSettings(**{key: value for key, value in self.data["trainer"].items() if key in SETTINGS})

    @classmethod
    def from_file(cls, path: str | Path, overrides: Iterable[str] = ()) -> Config:
        """The file through the bases it extends (``app/config/extends.py``), then :meth:`from_dict`."""
        chain = load_chain(path)
        return cls.from_dict(chain.data, str(path), overrides, chain=chain)

    @classmethod
    def from_dict(cls, data: dict, source: str, overrides: Iterable[str] = (), trusted: bool = True, chain: Chain | None = None) -> Config:
        """Defaults, then the overrides in order (left to right), then ``${references}``, then validation.

        ``chain``: the files ``data`` was merged from, and where each value came from."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: the config must be a mapping of keys (name, arch, ...), got {type(data).__name__}")
        for directive in (EXTENDS, PATCH):
            if directive in data:
                raise UserError(
                    f"{source}: {directive}: a config's bases and patches are read from its file; pass the file with -c "
                    f"(a driver passes app.config.read_config(FILE), the merged data)"
                )
        check_shape(data, source)  # before anything walks it: a checkpoint's config may be built to exhaust
        found = plain_data_problem(data)
        if found:
            raise UserError(f"{source}: {found[0]}: {found[1]}")
        origins = dict(chain.origins) if chain is not None else {path: source for path, _ in leaves(data)}
        data = with_defaults(data)
        for text in overrides:
            apply_override(data, text, source, trusted, origins)
        for key, spec in SCHEMA.items():  # said before a reference to it could be said to dangle
            if key not in data and spec.default is REQUIRED:
                raise UserError(f"{source}: {key}: missing; every experiment needs it (see the README configuration reference)")
        config = cls(resolve_references(data, source), source, trusted)
        config.origins, config.references = origins, references_in(data)
        config.files = list(chain.files) if chain is not None else []
        return config

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data

    @property
    def trainer(self) -> dict:
        return self.data["trainer"]

    def to_dict(self) -> dict:
        """The resolved config as plain data (saved in the run directory and every checkpoint); a
        literal ``${`` is written ``\\${`` so that it reads back as the same text."""
        return escape_literals(copy.deepcopy(self.data))

    def explain(self) -> str:
        """The resolved config, one value a line, each with the file:line or override that set it (``--print-config``)."""
        return render(self.to_dict(), self.origins, self.references, self.source, self.files)

    def digest(self) -> str:
        """A short hash of the resolved config: equal configs, equal digests."""
        return hashlib.sha256(json.dumps(self.data, sort_keys=True).encode()).hexdigest()[:16]

    def check_checkpoints_resumable(self) -> None:
        """Refuse, when a run starts, a config whose checkpoints the trust rule would refuse
        (``app/config/names.py``): what trains must resume, test and predict with the printed command."""
        if not self.trusted:
            return
        try:
            Config(self.to_dict(), self.source, trusted=False)
        except UntrustedName as exc:
            what = str(exc).split(": ", 1)[1].split(" is not defined in ")[0]
            raise UntrustedName(
                f"{self.source}: {what} is not defined in {trust_rule().describe()}, so this run's checkpoints could not be resumed, tested "
                f"or predicted: move it into one of those packages, list its package under [tool.pytorch-template] in "
                f"pyproject.toml, or add --trust-checkpoint to say you trust them"
            ) from None

    def error(self, key: str, problem: str) -> UserError:
        return UserError(f"{self.source}: {key}: {problem}")

    @property
    def metric_names(self) -> list[str]:
        return [metric_name(entry) for entry in self.data["metrics"]]

    def monitor(self) -> tuple[str, str | None]:
        return parse_monitor(self.trainer["monitor"])

    # -- building objects (see app/config/building.py) --------------------------------------

    def init_obj(self, key: str, *args: Any, **kwargs: Any) -> Any:
        """Build the object of node ``key``: ``type(*args, **node.args, **kwargs)``.

        ``args``/``kwargs`` are what the code must supply (e.g. parameters for an optimizer);
        config args may not replace them.
        """
        return building.build(self, key, self._node(key), *args, **kwargs)

    def init_ftn(self, key: str, *args: Any, **kwargs: Any) -> Callable:
        """``functools.partial`` of the function of node ``key`` with its args bound."""
        return building.build_partial(self, key, self._node(key), *args, **kwargs)

    def trainer_class(self) -> type:
        """The class ``trainer.type`` names (checked at validation to be a Trainer)."""
        return resolve_type("trainer", self.data["trainer"]["type"], self.source, self.trusted)

    def _node(self, key: str) -> dict:
        node = self.data.get(key)
        if node is None:
            raise self.error(key, "missing; add it to the config")
        return node

    # -- validation -------------------------------------------------------------------------

    def _validate(self) -> None:
        data = self.data
        found = plain_data_problem(data)
        if found:
            raise self.error(*found)
        for key, note in LEGACY_KEYS.items():
            if key in data:
                del data[key]
                self.notes.append(f"{self.source}: {note}")
        for key in data:
            if key == VARS:
                if not isinstance(data[key], dict):
                    raise self.error(key, f"must be a mapping of your own values (used as ${{vars.NAME}}), got {data[key]!r}")
                continue
            if key not in SCHEMA:
                hint = f"; did you mean 'trainer.{key}'?" if key in TRAINER_SCHEMA else closest(key, SCHEMA)
                hint = hint or "; your own values go under vars (used as ${vars.NAME}); see the README configuration reference"
                raise self.error(key, f"unknown top-level key{hint}")
        for key, spec in SCHEMA.items():
            if key not in data:
                raise self.error(key, "missing; every experiment needs it (see the README configuration reference)")
            problem = spec.problem(data[key])
            if problem:
                raise self.error(key, problem)
        for key, value in data["trainer"].items():
            if key not in TRAINER_SCHEMA:
                raise self.error(
                    f"trainer.{key}", f"unknown key{closest(key, TRAINER_SCHEMA, 'trainer.') or '; see the README configuration reference'}"
                )
            problem = TRAINER_SCHEMA[key].problem(value)
            if problem:
                raise self.error(f"trainer.{key}", problem)
        for path, schema in SECTIONS.items():  # logger, logger.mlflow, ...: each checked as a mapping by the one above it
            section = section_of(data, path)
            for key, value in section.items() if isinstance(section, dict) else ():
                if key not in schema:
                    raise self.error(f"{path}.{key}", f"unknown key{closest(key, schema, f'{path}.') or f'; {path} takes {sorted(schema)}'}")
                problem = schema[key].problem(value)
                if problem:
                    raise self.error(f"{path}.{key}", problem)
        self._check_trainer_class()
        for key in ("arch", "data_loader", "optimizer", "lr_scheduler", "loss"):
            if isinstance(data[key], dict):
                self._check_object(key, data[key])
        for index, entry in enumerate(data["metrics"]):
            if isinstance(entry, dict):
                self._check_object(f"metrics.{index}", entry, "metrics")
                if not isinstance(entry.get("name", ""), str):
                    raise self.error(f"metrics.{index}.name", f"must be a string, got {entry['name']!r}")
            elif isinstance(entry, str):
                resolve_type(f"metrics.{index}", entry, self.source, self.trusted)
            else:
                raise self.error(f"metrics.{index}", 'must be a function name or {"type": ..., "args": {...}, "name": ...}')
        if isinstance(data["loss"], str):
            resolve_type("loss", data["loss"], self.source, self.trusted)
        names = self.metric_names
        if len(set(names)) != len(names):
            raise self.error("metrics", f"two metrics share a name in {names}; give one a distinct 'name'")
        for index, name in enumerate(names):
            problem = reserved_metric_name(name)
            if problem:
                raise self.error(f"metrics.{index}.name", problem)
        self._check_monitor()

    def _check_object(self, key: str, node: dict, kind: str | None = None) -> None:
        kind = kind or key
        if "type" not in node:
            raise self.error(key, 'missing "type"; write {"type": "ClassName", "args": {...}}')
        if not isinstance(node["type"], str):
            raise self.error(f"{key}.type", f"must be a name string, got {node['type']!r}")
        for extra in node:
            if extra not in OBJECT_KEYS[kind]:
                hint = closest(extra, OBJECT_KEYS[kind], f"{key}.") or f"; {key} takes only {sorted(OBJECT_KEYS[kind])}"
                raise self.error(f"{key}.{extra}", f"unknown key{hint}")
        args = node.get("args") or {}
        if not isinstance(args, dict):
            raise self.error(f"{key}.args", f"must be a mapping of argument names to values, got {args!r}")
        if kind == "lr_scheduler" and node.get("interval", "epoch") not in ("epoch", "step"):
            raise self.error(f"{key}.interval", f'must be "epoch" or "step", got {node["interval"]!r}')
        if kind == "optimizer":
            self._check_param_groups(node.get("param_groups") or [])
        building.check_arguments(self, key, resolve_type(key, node["type"], self.source, self.trusted), args)
        self._check_nested_types(f"{key}.args", args)

    def _check_nested_types(self, path: str, value: Any) -> None:
        """Object nodes inside arguments (``data_loader.args.transforms``' lists): each full-path
        name is resolved under the trust rule here, before the object that will import it is built."""
        if isinstance(value, dict):
            if isinstance(value.get("type"), str) and set(value) <= {"type", "args"}:
                if ":" in value["type"] or ".transforms." in f".{path}.":
                    resolve_type(path, value["type"], self.source, self.trusted)
            for name, item in value.items():
                self._check_nested_types(f"{path}.{name}", item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._check_nested_types(f"{path}.{index}", item)

    def _check_trainer_class(self) -> None:
        """``trainer.type`` names the template's Trainer or a subclass; ``trainer.args`` are its own parameters."""
        from trainer import Trainer

        name = self.data["trainer"]["type"]
        target = resolve_type("trainer", name, self.source, self.trusted)
        if not (isinstance(target, type) and issubclass(target, Trainer)):
            raise self.error("trainer.type", f"{name!r} is not a subclass of trainer.Trainer; subclass it to change the train step")
        building.check_arguments(self, "trainer", target, self.data["trainer"]["args"], code_kwargs=building.trainer_parameters())

    def _check_param_groups(self, groups: Any) -> None:
        if not isinstance(groups, list):
            raise self.error("optimizer.param_groups", "must be a list of {params: prefix or [prefixes], ...}")
        for index, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise self.error(f"optimizer.param_groups.{index}", 'needs "params": a parameter-name prefix or a list of them')

    def _check_monitor(self) -> None:
        _, metric = self.monitor()
        if metric is None:
            return
        produced = ["loss", *self.metric_names]
        produced += [f"val_{name}" for name in produced]
        # A metric returning a mapping logs <name>_<key>: such names are checked on the pre-flight batch.
        if metric not in produced and not any(metric.startswith(f"{name}_") for name in produced):
            raise self.error("trainer.monitor", f"the run does not produce {metric!r}{closest(metric, produced)}; it logs {produced}")
