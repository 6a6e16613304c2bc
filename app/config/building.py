"""Building objects from object nodes, and the builders for loss, metrics, optimizer and scheduler.

``{"type": "Adam", "args": {"lr": 0.01}}`` becomes ``Adam(params, lr=0.01)``. Arguments are
checked against the signature first (unknown or missing names are config errors naming the key).
What happens inside the call is told apart: a library (torch, torchvision, torchmetrics)
rejecting a value is a config error naming the argument; an exception raised inside the user's
own code is a bug there and keeps its traceback (see ``utils/user_code.py``).
"""

from __future__ import annotations

import functools
import inspect
import re
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from app.config.names import closest, missing_package, resolve_type
from app.config.overrides import parameters
from app.config.schema import metric_name
from utils.errors import UserError, first_line
from utils.fetching import FetchRefused, fetches, guard, guarded_partial, restoring, sealed
from utils.seed import get_rng_state, set_rng_state
from utils.user_code import raised_in_user_code, relative, user_frame

if TYPE_CHECKING:
    from app.config.config import Config

NUMBER = (int, float)


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


def node_name(target: Callable) -> str:
    return getattr(target, "__name__", repr(target))


def _tensor_arguments(target: Callable, config_args: dict) -> dict:
    """Numbers and lists of numbers for parameters annotated as tensors become float tensors
    (``CrossEntropyLoss.weight``, ``BCEWithLogitsLoss.pos_weight``: JSON has no tensors)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return config_args
    converted = dict(config_args)
    for name, value in config_args.items():
        annotation = str(getattr(params.get(name), "annotation", ""))
        numeric = isinstance(value, NUMBER) and not isinstance(value, bool)
        numeric_list = isinstance(value, list) and value and all(isinstance(v, NUMBER) and not isinstance(v, bool) for v in value)
        tensor_only = "Tensor" in annotation and "float" not in annotation and "int" not in annotation  # not Adam's lr: float | Tensor
        if tensor_only and (numeric or numeric_list):
            converted[name] = torch.tensor(value, dtype=torch.float32)
    return converted


def check_arguments(config: Config, key: str, target: Callable, config_args: dict, code_args: tuple = (), code_kwargs: dict | None = None) -> None:
    """Config args must be parameters of ``target`` and must not replace what the code supplies."""
    supplied = set(code_kwargs or {})
    if code_args:
        try:
            supplied |= set(inspect.signature(target).bind_partial(*code_args).arguments)
        except (TypeError, ValueError):
            pass
    clash = set(config_args) & supplied
    if clash:
        raise config.error(f"{key}.args", f"{sorted(clash)} are supplied by the code; remove them from args")
    params = parameters(target)
    if params is None:
        return
    own = [param for param in params if param not in supplied]  # what the code supplies is never a suggestion
    for name in config_args:
        if name not in params:
            raise config.error(f"{key}.args.{name}", f"{node_name(target)} has no parameter {name!r}{closest(name, own, f'{key}.args.')}")


def _check_required(config: Config, key: str, target: Callable, config_args: dict, code_args: tuple, code_kwargs: dict) -> None:
    """Every parameter without a default must come from the config or the code."""
    try:
        signature = inspect.signature(target)
        bound = signature.bind_partial(*code_args, **code_kwargs, **config_args).arguments
    except (TypeError, ValueError):
        return
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for name, param in signature.parameters.items():
        if param.kind in kinds and param.default is inspect.Parameter.empty and name not in bound:
            raise config.error(f"{key}.args.{name}", f"{node_name(target)} needs this argument; add it to {key}.args")


def build(config: Config, key: str, node: dict, *args: Any, **kwargs: Any) -> Any:
    """Call ``node.type(*args, **node.args, **kwargs)``; see the module docstring for errors."""
    target = resolve_type(key, node["type"], config.source, config.trusted)
    config_args = dict(node.get("args") or {})
    check_arguments(config, key, target, config_args, args, kwargs)
    _check_required(config, key, target, config_args, args, kwargs)
    try:
        before = fetches()
        with guard(fetch_trusted(config)):  # what a build may fetch: utils/fetching.py
            built = target(*args, **_tensor_arguments(target, config_args), **kwargs)
        if fetches() > before and config in _REBUILT_AS_DATA:
            _check_rebuilds_as_data(config, key, node["type"], lambda: target(*args, **_tensor_arguments(target, config_args), **kwargs))
        return built
    except FetchRefused as exc:
        raise fetch_refused(config, key, node["type"], exc) from None
    except ModuleNotFoundError as exc:  # a lazy import of an optional dependency (torchmetrics' image metrics, ...)
        problem = package_not_installed(config, key, node["type"], exc)
        if problem is None:
            raise  # a module of an installed package that is not there: a bug where it was imported
        raise problem from None
    except UserError as exc:
        if str(exc).startswith(key.split(".")[0]):
            raise UserError(f"{config.source}: {exc}") from None
        raise
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError, AttributeError, NotImplementedError) as exc:
        blame = _blame(key, node["type"], target, config_args, exc)
        if blame is None:
            raise  # raised by the user's own code: a bug there, shown with its traceback
        raise config.error(*blame) from None


def build_partial(config: Config, key: str, node: dict, *args: Any, **kwargs: Any) -> Callable:
    """``functools.partial`` of the function of ``node`` with its args bound (checked, not called)."""
    target = resolve_type(key, node["type"], config.source, config.trusted)
    config_args = dict(node.get("args") or {})
    check_arguments(config, key, target, config_args, args, kwargs)
    refused = functools.partial(fetch_refused, config, key, node["type"])
    return guarded_partial(fetch_trusted(config), refused, target, *args, **_tensor_arguments(target, config_args), **kwargs)


_REBUILT_AS_DATA: weakref.WeakSet = weakref.WeakSet()
_NEW_FROM_DATA: weakref.WeakSet = weakref.WeakSet()


def starts_new_run(config: Config) -> None:
    """``config`` is data the project wrote (a CV's ``cv.json``) yet starts a new run (its next
    fold): no checkpoint holds its pretrained weights yet, so its builds fetch as a trusted
    config's do (hub files ``weights_only``, their published hash checked) while its names stay
    under the trust rule. A config from a checkpoint is never this: its builds are sealed."""
    _NEW_FROM_DATA.add(config)


def fetch_trusted(config: Config) -> bool:
    """Whether builds from ``config`` may fetch, verified (``utils/fetching.py``), or are sealed."""
    return config.trusted or config in _NEW_FROM_DATA


def require_rebuildable(config: Config) -> None:
    """A run starts from ``config`` and its checkpoints must resume, test and predict without
    ``--trust-checkpoint``: a node whose build fetched a file (pretrained weights) is built once
    more as its checkpoint's config would be (sealed, restoring), so one that could not is
    refused now, not after the run (the trust rule's promise, ``Config.check_checkpoints_resumable``)."""
    _REBUILT_AS_DATA.add(config)


def _check_rebuilds_as_data(config: Config, key: str, type_name: str, rebuild: Callable[[], Any]) -> None:
    state = get_rng_state()  # the second build draws initial weights too: the run's random stream stays as it was
    try:
        with sealed(), restoring():
            rebuild()
    except FetchRefused as exc:
        raise config.error(
            f"{key}.type",
            f"building {type_name} fetched files (pretrained weights, a download), and built from this run's checkpoints {exc} again, "
            f"which a checkpoint may not, so they could not be resumed, tested or predicted: for pretrained weights use "
            f"model.transfer:TransferClassifier (its checkpoints hold them; your own model can skip them when "
            f"utils.fetching.weights_restored()), or add --trust-checkpoint to say you trust them (files loaded weights_only, "
            f"their published hash checked)",
        ) from None
    finally:
        set_rng_state(state)


def package_not_installed(config: Config, key: str, type_name: str, exc: ModuleNotFoundError) -> UserError | None:
    """The one line for a build that needs a package this environment lacks (and where the user's
    code imported it), or None when ``exc`` is not that (see ``names.missing_package``). A library
    that raises ``ModuleNotFoundError`` with its own words and no module name (torchmetrics) is
    quoted."""
    frame = user_frame(exc)
    where = f" (imported at {relative(frame.filename)}:{frame.lineno})" if frame else ""
    package = missing_package(exc)
    if package:
        problem = f"needs the package {package!r}, which is not installed{where}; install it (pip install {package}), or name another"
    elif not exc.name and frame is None:
        problem = f"needs a package that is not installed ({first_line(exc, 200).rstrip('.')}); install it, or name another"
    else:
        return None
    return config.error(f"{key}.type", f"{type_name} {problem}")


def fetch_refused(config: Config, key: str, type_name: str, exc: FetchRefused) -> UserError:
    """The one line for a build from data that reached for a file or the network."""
    return config.error(
        f"{key}.type",
        f"building {type_name} {exc}; a config read back from a checkpoint is data and may not download or read cached files. "
        f"Pass the run's config with -c CONFIG, or add --trust-checkpoint (files are then loaded weights_only, their published hash checked)",
    )


def _blame(key: str, type_name: str, target: Callable, config_args: dict, exc: Exception) -> tuple[str, str] | None:
    """(key path, problem) for a constructor that raised, or None when user code raised it.

    The arg whose value is of another kind than its default is blamed first. Then, if the
    exception was raised by a line of the user's own code (a typo such as ``nn.Linear(...,
    biass=True)``, a ``raise`` of theirs), it is theirs to see; if a library raised it (torch
    rejecting a value the user's code passed on, ``nn.Dropout(2)``), the one arg the message names
    is blamed, else the whole ``args``.
    """
    message = first_line(exc)
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
        if isinstance(default, (list, tuple)) and isinstance(value, list) and len(value) != len(default):
            return f"{key}.args.{name}", f"{type_name} rejected {value!r} ({message}); it expects {len(default)} values like its default {default!r}"
    if raised_in_user_code(exc):
        return None
    named = [name for name in config_args if re.search(rf"\b{re.escape(name)}\b", message)]
    if not named:  # a number the message quotes, as in "negative dimension -1"
        named = [
            name
            for name, value in config_args.items()
            if isinstance(value, NUMBER) and not isinstance(value, bool) and re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", message)
        ]
    where = f"{key}.args.{named[0]}" if len(named) == 1 else f"{key}.args"
    return where, f"{type_name}(...) rejected its arguments: {message}; fix the value in the config"


# -- the builders train.py, test.py and predict.py share ------------------------------------------


def trainer_parameters() -> dict[str, None]:
    """The arguments the engine gives every Trainer (a subclass's ``trainer.args`` may not replace them)."""
    from trainer import Trainer

    return dict.fromkeys(parameters(Trainer) or ())


def build_loss(config: Config) -> Callable:
    """``"loss": "nll_loss"`` (a function) or ``{"type": "CrossEntropyLoss", "args": {...}}`` (a class or function)."""
    node = config["loss"]
    if isinstance(node, str):
        node = {"type": node}
    target = resolve_type("loss", node["type"], config.source, config.trusted)
    loss = build(config, "loss", node) if inspect.isclass(target) else build_partial(config, "loss", node)
    if not callable(loss):
        raise config.error("loss.type", f"{node['type']!r} built a {type(loss).__name__}, which cannot be called as loss(output, target)")
    return loss


def build_metrics(config: Config) -> dict[str, Any]:
    """Metrics by the name they are logged under: functions (bound to their args) or metric objects
    (classes such as torchmetrics', instantiated); an entry's ``output``/``target`` field paths
    wrap it in a :class:`~trainer.fields.Selected` (``trainer/fields.py``)."""
    from trainer.fields import Selected

    metrics = {}
    for index, entry in enumerate(config["metrics"]):
        node = {"type": entry} if isinstance(entry, str) else entry
        target = resolve_type(f"metrics.{index}", node["type"], config.source, config.trusted)
        if inspect.isclass(target):
            metric = build(config, f"metrics.{index}", node)
        else:
            metric = build_partial(config, f"metrics.{index}", node)
        paths = {side: node.get(side) for side in ("output", "target")}
        for side, path in paths.items():
            if path is not None and (not isinstance(path, str) or not path or "" in path.split(".")):
                raise config.error(f"metrics.{index}.{side}", f'must be a field name such as "cls" or "heads.cls", got {path!r}')
        metrics[metric_name(entry)] = Selected(metric, **paths) if any(paths.values()) else metric
    return metrics


def build_optimizer(config: Config, model: nn.Module) -> Any:
    """The optimizer over trainable parameters only, with optional per-prefix groups; with several
    declared (``trainer/optimizers.py``), an :class:`~trainer.optimizers.OptimizerSet` of them.

    ``optimizer.param_groups: [{"params": "backbone.", "lr": 1e-4}]`` puts every trainable
    parameter whose name starts with a given prefix in its own group with its own settings;
    the rest form the first group, with ``optimizer.args``.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise config.error("arch", "the model has no trainable parameter (is everything frozen?)")
    from trainer.optimizers import OptimizerSet, declares_several

    if not declares_several(config["optimizer"]):
        return _build_one(config, "optimizer", config["optimizer"], named)
    owned = _owners(config, named)
    optimizers, params, every = {}, {}, {}
    for name, node in config["optimizer"].items():
        mine = [(n, p) for n, p in named if owned[n] == name]
        optimizers[name] = _build_one(config, f"optimizer.{name}", node, mine)
        params[name] = [p for _, p in mine]
        every[name] = node.get("every", 1)
    return OptimizerSet(optimizers, params, every)


def _owners(config: Config, named: list[tuple[str, nn.Parameter]]) -> dict[str, str]:
    """Which optimizer owns each trainable parameter (by its ``params`` prefixes); a parameter owned twice or by none, and a prefix matching nothing, are one line each."""
    owners: dict[str, str] = {}
    for name, node in config["optimizer"].items():
        prefixes = node.get("params")
        prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
        for prefix in prefixes:
            matched = [n for n, _ in named if n.startswith(prefix)]
            if not matched:
                names = sorted({n.split(".")[0] + "." for n, _ in named})
                raise config.error(f"optimizer.{name}.params", f"no trainable parameter name starts with {prefix!r}; the model's trainable parameters start with {names}")
            for n in matched:
                if owners.get(n, name) != name:
                    raise config.error(
                        f"optimizer.{name}.params", f"parameter {n!r} is owned by optimizer {owners[n]!r} too; give every trainable parameter one owner"
                    )
                owners[n] = name
    orphans = [n for n, _ in named if n not in owners]
    if orphans:
        first = next(iter(config["optimizer"]))
        raise config.error(
            "optimizer", f"trainable parameter {orphans[0]!r} ({len(orphans)} in all) is owned by no optimizer; add its prefix to the params "
            f"of one (optimizer.{first}.params), or freeze it (trainer.freeze)"
        )
    return owners


def _build_one(config: Config, key: str, node: dict, named: list[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer:
    groups = []
    taken: set[str] = set()
    for index, spec in enumerate(node.get("param_groups") or []):
        prefixes = [spec["params"]] if isinstance(spec["params"], str) else list(spec["params"])
        chosen = {name for name, _ in named if name not in taken and name.startswith(tuple(prefixes))}
        params = [p for name, p in named if name in chosen]
        if not params:
            raise config.error(f"{key}.param_groups.{index}.params", f"no trainable parameter name starts with {prefixes}")
        taken |= chosen
        groups.append({**{k: v for k, v in spec.items() if k != "params"}, "params": params})
    rest = [p for name, p in named if name not in taken]
    if rest:
        groups.insert(0, {"params": rest})
    built = build(config, key, {k: v for k, v in node.items() if k in ("type", "args")}, groups)
    optimizer = built_as(config, key, built, torch.optim.Optimizer, "a torch.optim.Optimizer", node)
    if any("lr" not in group for group in optimizer.param_groups):  # logged every epoch, changed by schedulers
        raise config.error(
            f"{key}.type", f"{node['type']!r} keeps no learning rate ('lr') in its parameter groups, which the Trainer logs "
            f"and schedulers change; name an optimizer that takes lr"
        )
    return optimizer


def build_lr_scheduler(config: Config, optimizer: Any) -> Any:
    """The LR scheduler, or None when ``lr_scheduler`` is null; with several optimizers, a
    :class:`~trainer.optimizers.Schedules` of the named ones."""
    from trainer.optimizers import OptimizerSet, Schedules

    node = config["lr_scheduler"]
    if isinstance(optimizer, OptimizerSet):
        schedulers, intervals = {}, {}
        for name, spec in (node or {}).items():
            if name not in optimizer.optimizers:
                raise config.error(f"lr_scheduler.{name}", f"names no optimizer{closest(name, optimizer.names, 'lr_scheduler.') or ''}; the optimizers are {', '.join(optimizer.names)}")
            schedulers[name] = _build_scheduler(config, f"lr_scheduler.{name}", spec, optimizer.optimizers[name])
            intervals[name] = spec.get("interval", "epoch")
        return Schedules(schedulers, intervals)
    if node is None:
        return None
    return _build_scheduler(config, "lr_scheduler", node, optimizer)


def _build_scheduler(config: Config, key: str, node: dict, optimizer: torch.optim.Optimizer) -> Any:
    scheduler = build(config, key, {k: v for k, v in node.items() if k in ("type", "args")}, optimizer)
    if not all(callable(getattr(scheduler, name, None)) for name in ("step", "state_dict", "load_state_dict")):
        raise config.error(f"{key}.type", f"{node['type']!r} built a {type(scheduler).__name__}, not a learning-rate scheduler (step, state_dict); name one from torch.optim.lr_scheduler")
    return scheduler


def built_as(config: Config, key: str, obj: Any, kind: type, described: str, node: dict | None = None) -> Any:
    """``obj`` when it is a ``kind``; else one line naming ``key`` (a name that builds something else)."""
    if not isinstance(obj, kind):
        raise config.error(f"{key}.type", f"{(node or config[key])['type']!r} built a {type(obj).__name__}, not {described}; name one")
    return obj


def scheduler_interval(config: Config) -> str:
    """``"epoch"`` or ``"step"``: when the scheduler steps (with several optimizers, each schedule's own)."""
    node = config["lr_scheduler"] or {}
    return node.get("interval", "epoch") if "type" in node else "epoch"
