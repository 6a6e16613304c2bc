"""The experiment config: read it, fill defaults, apply command-line overrides, validate, build.

A config is plain data (JSON or YAML) and is trusted like code, because it names classes to
import; it is read with ``json.loads`` / a ``yaml.SafeLoader`` and nothing else. Nodes written
``{"type": "Name", "args": {...}}`` become objects through :meth:`Config.init_obj`.

Every documented key (``SCHEMA`` and ``TRAINER_SCHEMA`` below, mirrored in the README by
:func:`reference_markdown`) has a default, so any of them can be overridden on the command line
even when the file leaves it out. Every problem is raised as :class:`UserError` naming the file,
the key path and the fix, before anything is trained or written.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import inspect
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from utils.errors import UserError

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One documented config key: the types it accepts, its default and what it means."""

    types: tuple
    default: Any
    doc: str
    choices: tuple | None = None


NoneType = type(None)
NUMBER = (int, float)

SCHEMA: dict[str, Key] = {
    "name": Key((str,), "experiment", "Experiment name; runs go to `<save_dir>/<name>/<run_id>/`."),
    "seed": Key((int,), 0, "Seeds Python, NumPy and torch once; epoch e's data order depends only on seed and e."),
    "device": Key((str,), "auto", '`"auto"` (CUDA, then MPS, then CPU), `"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"`.'),
    "arch": Key((dict,), REQUIRED, "The model: `{type, args}`, looked up in `model/`, then `torch.nn`."),
    "data_loader": Key((dict,), REQUIRED, "The training data loader: `{type, args}`, looked up in `data_loader/`."),
    "loss": Key((str, dict), REQUIRED, "A function name from `model/loss.py`, or `{type, args}` (`model/loss.py`, then `torch.nn`)."),
    "metrics": Key((list,), [], "Metric functions from `model/metric.py`: names, or `{type, args, name}`."),
    "optimizer": Key((dict,), REQUIRED, "`{type, args, param_groups}` from `torch.optim`; gets trainable parameters only."),
    "lr_scheduler": Key((dict, NoneType), None, "`{type, args, interval}` from `torch.optim.lr_scheduler`, or null."),
    "trainer": Key((dict,), {}, "Training-loop settings, see the `trainer.*` keys."),
}

TRAINER_SCHEMA: dict[str, Key] = {
    "epochs": Key((int,), 10, "Number of epochs to train (an epoch is `len_epoch` batches when set)."),
    "save_dir": Key((str,), "saved/", "Root folder of run directories."),
    "save_period": Key((int,), 1, "Write `checkpoints/epoch-N.pth` every N epochs (0: never)."),
    "keep_last": Key((int,), 0, "Keep only the K newest `epoch-N.pth` (0: keep all); `last.pth` and `best.pth` always stay."),
    "verbosity": Key((int,), 1, "Console: 0 warnings, 1 info, 2 debug (`train.log` always gets info, and debug at 2).", (0, 1, 2)),
    "monitor": Key((str,), "min val_loss", '`"min <metric>"`, `"max <metric>"` or `"off"`; picks `best.pth` and drives early stop.'),
    "early_stop": Key((int,), 0, "Stop after this many epochs without improvement of the monitored metric (0: never)."),
    "tensorboard": Key((bool,), True, "Write TensorBoard event files into the run directory."),
    "log_step": Key((int,), 50, "Log the training loss (TensorBoard and console) every N optimizer steps."),
    "log_images": Key((bool,), False, "Write a grid of one input batch to TensorBoard every epoch (image inputs only)."),
    "log_histograms": Key((bool,), False, "Write parameter histograms to TensorBoard every epoch."),
    "progress_bar": Key((bool,), True, "Show tqdm bars on a terminal (never on non-zero ranks or when output is not a terminal)."),
    "amp": Key((str, NoneType), None, 'Mixed precision: `"bf16"`, `"fp16"` (with a GradScaler) or null.', ("bf16", "fp16", None)),
    "accumulate_steps": Key((int,), 1, "Micro-batches per optimizer step (gradient accumulation)."),
    "clip_grad_norm": Key((float, int, NoneType), None, "Clip the total gradient norm to this value (null: no clipping)."),
    "compile": Key((bool,), False, "Wrap the model in `torch.compile`."),
    "channels_last": Key((bool,), False, "Use the channels-last memory format for the model and 4-D inputs."),
    "len_epoch": Key((int, NoneType), None, "Iteration-based training: exactly this many batches per epoch (null: one pass)."),
    "overfit_batches": Key((int,), 0, "Debug: train on the first N batches only, unshuffled, and validate on them (0: off)."),
    "limit_batches": Key((int,), 0, "Debug: at most N batches per training and validation epoch (0: off)."),
    "save_every_n_steps": Key((int,), 0, "Also write `last.pth` every N optimizer steps, resumable mid-epoch (0: off)."),
    "deterministic": Key((bool,), False, "Turn on `torch.use_deterministic_algorithms`."),
    "sync_batchnorm": Key((bool,), False, "Under DDP, convert BatchNorm layers to SyncBatchNorm."),
    "find_unused_parameters": Key((bool,), False, "Passed to DistributedDataParallel (models with unused branches)."),
    "load_strict": Key((bool,), True, "Fine-tuning (`-r CKPT -c CONFIG`): require every weight to match by name."),
}

OBJECT_KEYS = {
    "arch": {"type", "args"},
    "data_loader": {"type", "args"},
    "loss": {"type", "args"},
    "optimizer": {"type", "args", "param_groups"},
    "lr_scheduler": {"type", "args", "interval"},
    "metrics": {"type", "args", "name"},
}

OBJECT_KEY_DOCS = {
    "type": "every object node; required. A class or function name looked up in the modules listed below, "
    'or a full path `"package.module:Name"`.',
    "args": "every object node; default `{}`. Keyword arguments for `type`; unknown names are errors.",
    "param_groups": 'optimizer only; default `[]`. `[{"params": "prefix" or ["prefixes"], "lr": ..., ...}]`: '
    "parameters whose names start with a prefix get their own group and settings; the rest use `args`.",
    "interval": 'lr_scheduler only; default `"epoch"`. `"step"` steps the scheduler after every optimizer step.',
    "name": "metrics entries only; default the function name. The name the metric is logged under.",
}

NAMESPACES = {
    "arch": ("model", "torch.nn"),
    "data_loader": ("data_loader",),
    "loss": ("model.loss", "torch.nn"),
    "metrics": ("model.metric",),
    "optimizer": ("torch.optim",),
    "lr_scheduler": ("torch.optim.lr_scheduler",),
}


# -- reading ----------------------------------------------------------------------------------


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 scalars, so that values mean what they look like.

    Plain YAML 1.1 reads ``off``/``no``/``yes`` as booleans (``monitor: off`` would be False),
    ``1e-3`` as a string, ``1:30`` as 90 and ``2024-01-01`` as a date; here only ``true``/``false``
    are booleans, ``1e-3`` is a float, and the rest stay strings.
    """


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


def closest(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """A ``did you mean`` suffix naming full key paths (``prefix + candidate``), or an empty string."""
    found = difflib.get_close_matches(name, [str(c) for c in candidates], n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(prefix + f) for f in found)}?" if found else ""


def read_config_file(path: str | Path) -> dict:
    """Read a ``.json``, ``.yaml`` or ``.yml`` config as plain data."""
    path = Path(path)
    if path.suffix not in (".json", ".yaml", ".yml"):
        raise UserError(f"{path}: a config must be a .json, .yaml or .yml file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found; pass an existing file with -c") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read config file ({exc.strerror}); pass a readable file with -c") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else load_yaml(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; fix the syntax there") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}; fix the syntax there") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level of a config must be a mapping of keys (name, arch, data_loader, ...)")
    return data


def with_defaults(data: dict) -> dict:
    """A deep copy of ``data`` with every documented key filled in."""
    data = copy.deepcopy(data)
    for key, spec in SCHEMA.items():
        if key not in data and spec.default is not REQUIRED:
            data[key] = copy.deepcopy(spec.default)
    if isinstance(data.get("trainer"), dict):
        for key, spec in TRAINER_SCHEMA.items():
            data["trainer"].setdefault(key, copy.deepcopy(spec.default))
    return data


# -- command-line overrides -------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any, bool]:
    """Split ``[+]a.b.c=value`` into its path, its YAML-parsed value and whether it may add a key."""
    if "=" not in text:
        raise UserError(f"override {text!r}: write overrides as key.path=value (e.g. trainer.epochs=3)")
    key, raw = text.split("=", 1)
    add = key.startswith("+")
    key = key.removeprefix("+")
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r}: the key path is empty or has an empty part; write key.path=value")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value, add


def apply_override(data: dict, text: str, source: str = "command line") -> None:
    """Set one ``key.path=value`` in ``data`` (which already holds the defaults).

    Documented keys may be set even when absent (see :func:`is_documented`); any other new key
    needs a leading ``+``.
    """
    try:
        parts, value, add = parse_override(text)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    where = f"{source}: override {text!r}"
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        path = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise UserError(f"{where}: {path} is not an index of a list of {len(node)} items")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise UserError(f"{where}: {'.'.join(parts[:depth])} is {node!r}, not a mapping of keys; set the whole value instead")
        if part not in node and not add and not is_documented(data, parts[: depth + 1]):
            raise UserError(f"{where}: unknown key {path}{_hint(data, parts[:depth], part)}")
        if last:
            node[part] = value
            return
        if node.get(part) is None:
            node[part] = {}
        node = node[part]


def is_documented(data: dict, parts: list[str]) -> bool:
    """Whether ``parts`` names a key documented for every config, so it may be set when absent.

    Those are the ``SCHEMA`` and ``trainer.*`` keys, an object node's own keys (``type``,
    ``args``, ...), and ``<object>.args.<name>`` when the object's type takes a parameter ``name``.
    """
    head = parts[0]
    if len(parts) == 1:
        return head in SCHEMA
    if head == "trainer":
        return len(parts) == 2 and parts[1] in TRAINER_SCHEMA
    if head not in OBJECT_KEYS or head == "metrics":
        return False
    if len(parts) == 2:
        return parts[1] in OBJECT_KEYS[head]
    return len(parts) == 3 and parts[1] == "args" and _is_object_parameter(data, parts)


def _hint(data: dict, parents: list[str], part: str) -> str:
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
    elif len(parents) == 1 and parents[0] in OBJECT_KEYS:
        candidates |= OBJECT_KEYS[parents[0]]
    elif len(parents) == 2 and parents[1] == "args" and parents[0] in NAMESPACES:
        candidates |= _parameters_of(data, parents[0]) or set()
    hint = closest(part, candidates, prefix)
    if hint:
        return hint
    if len(parents) == 2 and parents[1] == "args" and candidates:
        return f"; {data[parents[0]]['type']} takes {sorted(candidates)}"
    if len(parents) >= 2:
        return f"; write +{prefix}{part}=... to add a key the config does not have"
    return "; see the README configuration reference for the keys"


def _is_object_parameter(data: dict, parts: list[str]) -> bool:
    """True for ``<object>.args.<name>`` where ``name`` is a parameter of the object's type."""
    params = _parameters_of(data, parts[0])
    return params is None or parts[2] in params


def _parameters_of(data: dict, key: str) -> set[str] | None:
    """Parameter names of the type of object node ``key`` (None: any name, or the type is unknown)."""
    node = data.get(key)
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        return set()
    try:
        return _parameters(resolve_type(key, node["type"], "override"))
    except UserError:
        return set()


def _parameters(target: Callable) -> set[str] | None:
    """Names ``target`` accepts as keyword arguments, or None when it takes ``**kwargs``."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


# -- names to objects -------------------------------------------------------------------------


def _public_callables(module) -> list[str]:
    return [name for name, obj in vars(module).items() if not name.startswith("_") and callable(obj)]


def resolve_type(key: str, name: str, source: str) -> Callable:
    """Find a class or function by name for config key ``key`` (see ``NAMESPACES``).

    ``"package.module:Name"`` imports anything importable.
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
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
        return getattr(module, attr)
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


def parse_monitor(monitor: str) -> tuple[str, str | None]:
    """``"min val_loss"`` -> ``("min", "val_loss")``; ``"off"`` -> ``("off", None)``."""
    if monitor == "off":
        return "off", None
    mode, _, metric = monitor.partition(" ")
    if mode not in ("min", "max") or not metric or " " in metric:
        raise ValueError(monitor)
    return mode, metric


def metric_name(entry: str | dict) -> str:
    """The name a metric is logged under: its ``name``, else its function name."""
    return entry if isinstance(entry, str) else entry.get("name") or entry["type"]


def node_name(target: Callable) -> str:
    return getattr(target, "__name__", repr(target))


def _kind(value: Any) -> str:
    """A value's kind as a config author sees it (1 and 1.0 are both numbers)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, NUMBER):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Config:
    """A validated experiment config: plain data plus the file it came from, for error messages."""

    def __init__(self, data: dict, source: str = "config"):
        self.source = source
        self.data = with_defaults(data)
        self._validate()

    @classmethod
    def from_file(cls, path: str | Path, overrides: Iterable[str] = ()) -> Config:
        return cls.from_dict(read_config_file(path), str(path), overrides)

    @classmethod
    def from_dict(cls, data: dict, source: str, overrides: Iterable[str] = ()) -> Config:
        """Defaults, then the overrides in order (left to right), then validation."""
        data = with_defaults(data)
        for text in overrides:
            apply_override(data, text, source)
        return cls(data, source)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data

    @property
    def trainer(self) -> dict:
        return self.data["trainer"]

    def to_dict(self) -> dict:
        """The resolved config as plain data (saved in the run directory and every checkpoint)."""
        return copy.deepcopy(self.data)

    def error(self, key: str, problem: str) -> UserError:
        return UserError(f"{self.source}: {key}: {problem}")

    @property
    def metric_names(self) -> list[str]:
        return [metric_name(entry) for entry in self.data["metrics"]]

    def monitor(self) -> tuple[str, str | None]:
        return parse_monitor(self.trainer["monitor"])

    # -- building objects -------------------------------------------------------------------

    def init_obj(self, key: str, *args: Any, **kwargs: Any) -> Any:
        """Build the object of node ``key``: ``type(*args, **node.args, **kwargs)``.

        ``args``/``kwargs`` are what the code must supply (e.g. parameters for an optimizer);
        config args may not replace them.
        """
        return self.build(key, self._node(key), *args, **kwargs)

    def init_ftn(self, key: str, *args: Any, **kwargs: Any) -> Callable:
        """``functools.partial`` of the function of node ``key`` with its args bound."""
        return self.build_partial(key, self._node(key), *args, **kwargs)

    def build_partial(self, key: str, node: dict, *args: Any, **kwargs: Any) -> Callable:
        target = resolve_type(key, node["type"], self.source)
        config_args = dict(node.get("args") or {})
        self._check_arguments(key, target, config_args, args, kwargs)
        return functools.partial(target, *args, **config_args, **kwargs)

    def build(self, key: str, node: dict, *args: Any, **kwargs: Any) -> Any:
        """Call ``node.type``; what it rejects is reported as the config key that caused it."""
        target = resolve_type(key, node["type"], self.source)
        config_args = dict(node.get("args") or {})
        self._check_arguments(key, target, config_args, args, kwargs)
        self._check_required(key, target, config_args, args, kwargs)
        try:
            return target(*args, **config_args, **kwargs)
        except UserError as exc:
            if str(exc).startswith(key.split(".")[0]):
                raise UserError(f"{self.source}: {exc}") from None
            raise
        except (TypeError, ValueError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise self.error(*self._blame(key, node["type"], target, config_args, message)) from None

    def _blame(self, key: str, type_name: str, target: Callable, config_args: dict, message: str) -> tuple[str, str]:
        """(key path, problem) for a constructor that raised: the arg whose value is of another
        kind than its default, else the one arg the message names, else the whole ``args``."""
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            params = {}
        for name, value in config_args.items():
            default = getattr(params.get(name), "default", inspect.Parameter.empty)
            if default is not inspect.Parameter.empty and default is not None and value is not None and _kind(value) != _kind(default):
                return (
                    f"{key}.args.{name}",
                    f"{type_name} rejected {value!r} ({message}); it expects {_kind(default)} like its default {default!r}",
                )
        named = [name for name in config_args if re.search(rf"\b{re.escape(name)}\b", message)]
        where = f"{key}.args.{named[0]}" if len(named) == 1 else f"{key}.args"
        return where, f"{type_name}(...) rejected its arguments: {message}; fix the value in the config"

    def _node(self, key: str) -> dict:
        node = self.data.get(key)
        if node is None:
            raise self.error(key, "missing; add it to the config")
        return node

    def _check_arguments(
        self, key: str, target: Callable, config_args: dict, code_args: tuple = (), code_kwargs: dict | None = None
    ) -> None:
        """Config args must be parameters of ``target`` and must not replace what the code supplies."""
        supplied = set(code_kwargs or {})
        if code_args:
            try:
                supplied |= set(inspect.signature(target).bind_partial(*code_args).arguments)
            except (TypeError, ValueError):
                pass
        clash = set(config_args) & supplied
        if clash:
            raise self.error(f"{key}.args", f"{sorted(clash)} are supplied by the code; remove them from args")
        params = _parameters(target)
        if params is None:
            return
        for name in config_args:
            if name not in params:
                raise self.error(
                    f"{key}.args.{name}",
                    f"{node_name(target)} has no parameter {name!r}{closest(name, params, f'{key}.args.')}",
                )

    def _check_required(self, key: str, target: Callable, config_args: dict, code_args: tuple, code_kwargs: dict) -> None:
        """Every parameter without a default must come from the config or the code."""
        try:
            signature = inspect.signature(target)
            bound = signature.bind_partial(*code_args, **code_kwargs, **config_args).arguments
        except (TypeError, ValueError):
            return
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        for name, param in signature.parameters.items():
            if param.kind in kinds and param.default is inspect.Parameter.empty and name not in bound:
                raise self.error(f"{key}.args.{name}", f"{node_name(target)} needs this argument; add it to {key}.args")

    # -- validation -------------------------------------------------------------------------

    def _validate(self) -> None:
        data = self.data
        for key in data:
            if key not in SCHEMA:
                hint = f"; did you mean 'trainer.{key}'?" if key in TRAINER_SCHEMA else closest(key, SCHEMA)
                raise self.error(key, f"unknown top-level key{hint or '; see the README configuration reference'}")
        for key, spec in SCHEMA.items():
            if key not in data:
                raise self.error(key, "missing; every experiment needs it (see the README configuration reference)")
            self._check_type(key, data[key], spec)
        for key, value in data["trainer"].items():
            if key not in TRAINER_SCHEMA:
                raise self.error(
                    f"trainer.{key}", f"unknown key{closest(key, TRAINER_SCHEMA, 'trainer.') or '; see the README configuration reference'}"
                )
            self._check_type(f"trainer.{key}", value, TRAINER_SCHEMA[key])
        name = data["name"]
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise self.error("name", f"{name!r} is not a folder name; use letters, digits, '-', '_' or '.'")
        for key in ("arch", "data_loader", "optimizer", "lr_scheduler", "loss"):
            if isinstance(data[key], dict):
                self._check_object(key, data[key])
        for index, entry in enumerate(data["metrics"]):
            if isinstance(entry, dict):
                self._check_object(f"metrics.{index}", entry, "metrics")
                if not isinstance(entry.get("name", ""), str):
                    raise self.error(f"metrics.{index}.name", f"must be a string, got {entry['name']!r}")
            elif isinstance(entry, str):
                resolve_type(f"metrics.{index}", entry, self.source)
            else:
                raise self.error(f"metrics.{index}", 'must be a function name or {"type": ..., "args": {...}, "name": ...}')
        if isinstance(data["loss"], str):
            resolve_type("loss", data["loss"], self.source)
        names = self.metric_names
        if len(set(names)) != len(names):
            raise self.error("metrics", f"two metrics share a name in {names}; give one a distinct 'name'")
        self._check_trainer()

    def _check_type(self, key: str, value: Any, spec: Key) -> None:
        ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
        if not ok:
            wanted = " or ".join("null" if t is NoneType else {"dict": "mapping"}.get(t.__name__, t.__name__) for t in spec.types)
            raise self.error(key, f"expected {wanted}, got {type(value).__name__} {value!r}")
        if spec.choices is not None and value not in spec.choices:
            raise self.error(key, f"must be one of {list(spec.choices)}, got {value!r}")

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
        self._check_arguments(key, resolve_type(key, node["type"], self.source), args)

    def _check_param_groups(self, groups: Any) -> None:
        if not isinstance(groups, list):
            raise self.error("optimizer.param_groups", "must be a list of {params: prefix or [prefixes], ...}")
        for index, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise self.error(f"optimizer.param_groups.{index}", 'needs "params": a parameter-name prefix or a list of them')

    def _check_trainer(self) -> None:
        trainer = self.trainer
        try:
            mode, metric = self.monitor()
        except ValueError:
            raise self.error("trainer.monitor", f'must be "min <metric>", "max <metric>" or "off", got {trainer["monitor"]!r}') from None
        if metric is not None:
            produced = ["loss", *self.metric_names]
            produced += [f"val_{name}" for name in produced]
            if metric not in produced:
                raise self.error("trainer.monitor", f"the run does not produce {metric!r}{closest(metric, produced)}; it logs {produced}")
        for key in ("epochs", "accumulate_steps", "log_step"):
            if trainer[key] < 1:
                raise self.error(f"trainer.{key}", f"must be at least 1, got {trainer[key]}")
        for key in ("save_period", "keep_last", "early_stop", "overfit_batches", "limit_batches", "save_every_n_steps"):
            if trainer[key] < 0:
                raise self.error(f"trainer.{key}", f"must be 0 (off) or positive, got {trainer[key]}")
        if trainer["len_epoch"] is not None and trainer["len_epoch"] < 1:
            raise self.error("trainer.len_epoch", f"must be null or at least 1, got {trainer['len_epoch']}")
        if trainer["clip_grad_norm"] is not None and trainer["clip_grad_norm"] <= 0:
            raise self.error("trainer.clip_grad_norm", f"must be null or positive, got {trainer['clip_grad_norm']}")


# -- documentation ----------------------------------------------------------------------------


def reference_markdown() -> str:
    """The README's key table, generated from ``SCHEMA``/``TRAINER_SCHEMA`` so the two cannot drift."""

    def kind(spec: Key) -> str:
        names = {"dict": "mapping", "NoneType": "null"}
        kinds = [names.get(t.__name__, t.__name__) for t in spec.types]
        if "float" in kinds and "int" in kinds:
            kinds = ["number", *(k for k in kinds if k not in ("float", "int"))]
        return " or ".join(kinds)

    def default(spec: Key) -> str:
        return "required" if spec.default is REQUIRED else f"`{json.dumps(spec.default)}`"

    rows = [("", key, spec) for key, spec in SCHEMA.items()]
    rows += [("trainer.", key, spec) for key, spec in TRAINER_SCHEMA.items()]
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{prefix}{key}` | {kind(spec)} | {default(spec)} | {spec.doc} |" for prefix, key, spec in rows]
    lines += ["", "Object nodes (`arch`, `data_loader`, `loss`, `metrics` entries, `optimizer`, `lr_scheduler`):", ""]
    lines += ["| node key | where, default and meaning |", "| --- | --- |"]
    lines += [f"| `{key}` | {doc} |" for key, doc in OBJECT_KEY_DOCS.items()]
    lines += ["", "Where `type` is looked up:", ""]
    lines += [f"- `{key}`: {', '.join(f'`{m}`' for m in modules)}" for key, modules in NAMESPACES.items()]
    return "\n".join(lines) + "\n"
