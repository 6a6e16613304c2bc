"""The experiment config: read it, fill defaults, apply command-line overrides, validate, build.

A config is plain data (JSON or YAML) and is trusted like code, because it names classes to
import; it is read with ``json.load`` / ``yaml.safe_load`` and nothing else. Nodes written
``{"type": "Name", "args": {...}}`` become objects through :meth:`Config.init_obj`.

Every documented key (``SCHEMA`` and ``TRAINER_SCHEMA`` below, mirrored in the README) has a
default, so any of them can be overridden on the command line even when the file leaves it out.
Every problem is raised as :class:`UserError` naming the file, the key path and the fix.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import inspect
import json
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
    "verbosity": Key((int,), 1, "0: warnings, 1: info, 2: debug.", (0, 1, 2)),
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

NAMESPACES = {
    "arch": ("model", "torch.nn"),
    "data_loader": ("data_loader",),
    "loss": ("model.loss", "torch.nn"),
    "metrics": ("model.metric",),
    "optimizer": ("torch.optim",),
    "lr_scheduler": ("torch.optim.lr_scheduler",),
}


def closest(name: str, candidates: Iterable[str]) -> str:
    """A ``did you mean`` suffix for an error message, or an empty string."""
    found = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(f) for f in found)}?" if found else ""


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
        raise UserError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level of a config must be a mapping of keys")
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


def parse_override(text: str) -> tuple[list[str], Any, bool]:
    """Split ``[+]a.b.c=value`` into its path, its YAML-parsed value and whether it may add a key."""
    if "=" not in text:
        raise UserError(f"override {text!r}: write overrides as key.path=value (e.g. trainer.epochs=3)")
    key, raw = text.split("=", 1)
    add = key.startswith("+")
    key = key.lstrip("+")
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r}: the key path is empty or has an empty part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value, add


def apply_override(data: dict, text: str) -> None:
    """Set one ``key.path=value`` in ``data``; unknown keys need ``+`` unless they are an object's parameter."""
    parts, value, add = parse_override(text)
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        path = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise UserError(f"override {text!r}: {path} is not an index of a list of {len(node)} items")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise UserError(f"override {text!r}: {'.'.join(parts[:depth])} is a value, not a mapping of keys")
        if part not in node and not (add or (last and _is_object_parameter(data, parts))):
            raise UserError(f"override {text!r}: unknown key {path}{closest(part, node)} (write +{'.'.join(parts)}=... to add a new key)")
        if last:
            node[part] = value
            return
        if part not in node:
            node[part] = {}
        node = node[part]


def _is_object_parameter(data: dict, parts: list[str]) -> bool:
    """True for ``<object>.args.<name>`` where ``name`` is a parameter of the object's type."""
    if len(parts) != 3 or parts[1] != "args" or parts[0] not in NAMESPACES:
        return False
    node = data.get(parts[0])
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        return False
    try:
        target = resolve_type(parts[0], node["type"], "override")
    except UserError:
        return False
    params = _parameters(target)
    return params is None or parts[2] in params


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
            raise UserError(f"{source}: {key}.type: cannot import module {module_name!r} ({exc})") from None
        if not hasattr(module, attr):
            raise UserError(f"{source}: {key}.type: module {module_name!r} has no {attr!r}{closest(attr, _public_callables(module))}")
        return getattr(module, attr)
    candidates: list[str] = []
    namespaces = NAMESPACES[key.split(".")[0].split("[")[0]]
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
        data = with_defaults(data)
        for text in overrides:
            apply_override(data, text)
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

        ``kwargs`` are what the code must supply (e.g. parameters for an optimizer); config
        args may not replace them.
        """
        return self.build(key, self._node(key), *args, **kwargs)

    def init_ftn(self, key: str, *args: Any, **kwargs: Any) -> Callable:
        """``functools.partial`` of the function of node ``key`` with its args bound."""
        return self.build_partial(key, self._node(key), *args, **kwargs)

    def build_partial(self, key: str, node: dict, *args: Any, **kwargs: Any) -> Callable:
        target = resolve_type(key, node["type"], self.source)
        self._check_arguments(key, target, node.get("args") or {}, kwargs)
        return functools.partial(target, *args, **(node.get("args") or {}), **kwargs)

    def build(self, key: str, node: dict, *args: Any, **kwargs: Any) -> Any:
        target = resolve_type(key, node["type"], self.source)
        config_args = dict(node.get("args") or {})
        self._check_arguments(key, target, config_args, kwargs)
        try:
            return target(*args, **config_args, **kwargs)
        except (TypeError, ValueError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise self.error(f"{key}.args", f"{node['type']}(...) rejected its arguments: {message}") from None

    def _node(self, key: str) -> dict:
        node = self.data.get(key)
        if node is None:
            raise self.error(key, "missing; add it to the config")
        return node

    def _check_arguments(self, key: str, target: Callable, config_args: dict, code_kwargs: dict) -> None:
        clash = set(config_args) & set(code_kwargs)
        if clash:
            raise self.error(f"{key}.args", f"{sorted(clash)} are supplied by the code; remove them from args")
        params = _parameters(target)
        if params is None:
            return
        for name in config_args:
            if name not in params:
                raise self.error(
                    f"{key}.args.{name}",
                    f"{getattr(target, '__name__', target)} has no parameter {name!r}{closest(name, params)}",
                )

    # -- validation -------------------------------------------------------------------------

    def _validate(self) -> None:
        data = self.data
        for key in data:
            if key not in SCHEMA:
                raise self.error(key, f"unknown top-level key{closest(key, SCHEMA)}")
        for key, spec in SCHEMA.items():
            if key not in data:
                raise self.error(key, "missing; every experiment needs it (see the README config reference)")
            self._check_type(key, data[key], spec)
        for key, value in data["trainer"].items():
            if key not in TRAINER_SCHEMA:
                raise self.error(f"trainer.{key}", f"unknown key{closest(key, TRAINER_SCHEMA)}")
            self._check_type(f"trainer.{key}", value, TRAINER_SCHEMA[key])
        for key in ("arch", "data_loader", "optimizer", "lr_scheduler", "loss"):
            if isinstance(data[key], dict):
                self._check_object(key, data[key])
        for index, entry in enumerate(data["metrics"]):
            if isinstance(entry, dict):
                self._check_object(f"metrics.{index}", entry, "metrics")
            elif not isinstance(entry, str):
                raise self.error(f"metrics.{index}", "must be a function name or {type, args, name}")
            resolve_type(f"metrics.{index}", metric_name(entry) if isinstance(entry, str) else entry["type"], self.source)
        if isinstance(data["loss"], str):
            resolve_type("loss", data["loss"], self.source)
        names = self.metric_names
        if len(set(names)) != len(names):
            raise self.error("metrics", f"two metrics share a name in {names}; give one a distinct 'name'")
        self._check_trainer()

    def _check_type(self, key: str, value: Any, spec: Key) -> None:
        ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
        if not ok:
            wanted = " or ".join("null" if t is NoneType else t.__name__ for t in spec.types)
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
                raise self.error(f"{key}.{extra}", f"unknown key{closest(extra, OBJECT_KEYS[kind])}")
        if not isinstance(node.get("args") or {}, dict):
            raise self.error(f"{key}.args", "must be a mapping of argument names to values")
        if kind == "lr_scheduler" and node.get("interval", "epoch") not in ("epoch", "step"):
            raise self.error(f"{key}.interval", f'must be "epoch" or "step", got {node["interval"]!r}')
        if kind == "optimizer":
            self._check_param_groups(node.get("param_groups") or [])
        resolve_type(key, node["type"], self.source)

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
        positive = ("epochs", "accumulate_steps", "log_step")
        for key in positive:
            if trainer[key] < 1:
                raise self.error(f"trainer.{key}", f"must be at least 1, got {trainer[key]}")
        for key in ("save_period", "keep_last", "early_stop", "overfit_batches", "limit_batches", "save_every_n_steps"):
            if trainer[key] < 0:
                raise self.error(f"trainer.{key}", f"must be 0 (off) or positive, got {trainer[key]}")
        if trainer["len_epoch"] is not None and trainer["len_epoch"] < 1:
            raise self.error("trainer.len_epoch", f"must be null or at least 1, got {trainer['len_epoch']}")
        if trainer["clip_grad_norm"] is not None and trainer["clip_grad_norm"] <= 0:
            raise self.error("trainer.clip_grad_norm", f"must be null or positive, got {trainer['clip_grad_norm']}")
