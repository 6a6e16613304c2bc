"""A sweep's search space file (``--space``), checked like a config before anything is created.

.. code-block:: yaml

    trials: 12          # the study's total, across all workers and restarts (--trials overrides it)
    sampler: tpe        # tpe | random | grid (grid: choices only; trials defaults to the grid's size)
    pruner: median      # median | hyperband | none; or {type: median, args: {n_startup_trials: 3}}
    seed: 0             # the sampler's seed (default: the config's seed)
    heartbeat: 60       # seconds between a running trial's heartbeats in the storage (0: off)
    params:
      optimizer.args.lr: {low: 1.0e-4, high: 1.0e-1, log: true}
      arch.args.dropout: {choices: [0.0, 0.25, 0.5]}
      data_loader.args.batch_size: {low: 16, high: 128, step: 16}

A parameter is a config key path (as on the command line) and one of: ``{low, high}`` with
optional ``log: true`` or ``step`` (whole numbers for ``low`` and ``high`` make an integer
parameter, unless the config's value there is a float), or ``{choices: [...]}`` (numbers,
strings, booleans or null; or mappings of key paths to values, a paired variant, under a name of
your own: ``variant: {choices: [{arch.args.dropout: 0.0, optimizer.args.lr: 0.01}, ...]}``, each
stored in the study as its JSON text). Each is Optuna's own
distribution (``FloatDistribution``, ``IntDistribution``, ``CategoricalDistribution``); a sampler's
and a pruner's ``args`` are the Optuna class's own keyword arguments.

The space is data: nothing in it names code. Every key path must be one the config accepts
(the same check, with the same did-you-mean, as an override), and every value the space can give
(each choice, each end of a range) is put through the checks ``train.py`` makes before it creates
anything, before the study exists; ``name``, ``trainer.save_dir`` and ``trainer.monitor`` cannot
be varied; a study holds at most :data:`MAX_TRIALS` trials (see ``docs/sweeps.md``).
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import Config, read_config, read_config_file
from utils.errors import UserError, closest, first_line

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
TOP_KEYS = ("trials", "sampler", "pruner", "seed", "heartbeat", "params")
RANGE_KEYS = ("low", "high", "log", "step")
MAX_GRID = 100_000
MAX_VALUES = 2_000
"""A space gives at most this many values to check (every choice, and two ends per range): each is a
config built and checked before the study exists (some 10 ms each), so the check stays in seconds."""
MAX_TRIALS = 10_000
"""A study's total is at most this: its trial slots are created up front, one row each in the storage
(about 4 ms a slot on SQLite, so some 40 s for the largest), which is what keeps the total exact
whatever number of workers ask at once. The bound is checked before anything is created."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Param:
    """One dimension: ``kind`` is ``"float"``, ``"int"`` or ``"choices"``."""

    key: str
    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()
    mapped: bool = False
    """Choices that are mappings of several key paths (a paired variant), held as JSON text: one Optuna categorical value each."""

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choices":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def examples(self) -> list:
        """The values that show whether the config accepts this parameter: every choice, or the ends
        of the range as Optuna samples it (a ``high`` that ``step`` does not reach is lowered to the last step)."""
        if self.kind == "choices":
            return list(self.choices)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's note that it lowers ``high`` comes again when it samples
            distribution = self.distribution()
        return [distribution.low, distribution.high]

    def as_data(self) -> dict:
        if self.kind == "choices":
            return {"choices": list(self.choices)}
        data: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            data["log"] = True
        if self.step is not None:
            data["step"] = self.step
        return data


@dataclass(frozen=True)
class Space:
    """A checked search space: the study's total, sampler, pruner and parameters; ``identity()`` is what a
    restart compares with the stored study."""

    source: str
    trials: int
    sampler: str
    sampler_args: dict
    pruner: str
    pruner_args: dict
    seed: int
    heartbeat: int
    params: tuple[Param, ...]

    def identity(self) -> dict:
        """What makes two runs of ``sweep.py`` the same sweep (the total may grow; see ``app/sweeps/study.py``)."""
        return {
            "sampler": {"type": self.sampler, "args": self.sampler_args},
            "pruner": {"type": self.pruner, "args": self.pruner_args},
            "seed": self.seed,
            "heartbeat": self.heartbeat,  # workers with other intervals would fail each other's live trials as stale
            "params": {param.key: param.as_data() for param in self.params},
        }

    def grid(self) -> list[dict]:
        """Every combination of the choices, in the space's order (``sampler: grid``)."""
        return [dict(zip((p.key for p in self.params), values)) for values in itertools.product(*(p.choices for p in self.params))]

    def overrides(self, values: dict) -> list[str]:
        """A trial's values as config overrides (``key=<JSON>``; the config reader takes JSON scalars)."""
        mapped = {param.key for param in self.params if param.mapped}
        pairs = [pair for key, value in values.items() for pair in (json.loads(value).items() if key in mapped else [(key, value)])]
        return [f"{key}={json.dumps(value)}" for key, value in pairs]

    def make_sampler(self, slot: int):
        """The Optuna sampler for trial ``slot``, seeded by ``seed`` and the slot: the same history
        gives the same suggestion whichever worker asks (two workers never share one random stream)."""
        import optuna

        seed = self.seed * 1_000_003 + slot
        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(**{"seed": seed, **self.sampler_args})
        return optuna.samplers.RandomSampler(**{"seed": seed, **self.sampler_args})  # random; grid trials have fixed values

    def make_pruner(self, epochs: int):
        import optuna

        if self.pruner == "median":
            return optuna.pruners.MedianPruner(**self.pruner_args)
        if self.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": max(1, epochs), **self.pruner_args})
        return optuna.pruners.NopPruner()


def read_space(path: str | Path, trials: int | None, base: Config, config_path: str, overrides: list[str], trust_checkpoint: bool = False) -> Space:
    """Read and check ``--space`` (see the module docstring); every error is one line naming the key."""
    source = str(path)
    data = read_config_file(path, kind="search space", flag="--space", keys=", ".join(TOP_KEYS))
    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"{source}: unknown key {key!r}{closest(key, TOP_KEYS)}; a space has {', '.join(TOP_KEYS)}")
    params = tuple(_as_config_type(param, base.to_dict()) for param in _params(source, data.get("params")))
    values = sum(len(param.choices) if param.kind == "choices" else 2 for param in params)
    if values > MAX_VALUES:
        raise UserError(f"{source}: params: {values} values to check (choices and range ends), more than {MAX_VALUES}; give a range {{low, high}} for a long list of numbers")
    sampler, sampler_args = _kind(source, "sampler", data.get("sampler", "tpe"), SAMPLERS)
    pruner, pruner_args = _kind(source, "pruner", data.get("pruner", "median"), PRUNERS)
    if sampler == "grid":
        bad = [param.key for param in params if param.kind != "choices"]
        if bad:
            raise UserError(f"{source}: sampler grid takes choices only; params.{bad[0]} is a range: give it choices: [...]")
        if sampler_args:
            raise UserError(f"{source}: sampler grid takes no args")
    seed = data.get("seed", base["seed"])
    if not _whole(seed) or seed < 0:
        raise UserError(f"{source}: seed: must be a whole number from 0, got {seed!r}")
    heartbeat = data.get("heartbeat", 60)
    if not _whole(heartbeat) or heartbeat < 0:
        raise UserError(f"{source}: heartbeat: must be whole seconds (0: off), got {heartbeat!r}")
    grid_size = math.prod(len(param.choices) for param in params) if sampler == "grid" else None
    if grid_size is not None and grid_size > MAX_GRID:
        raise UserError(f"{source}: the grid has {grid_size} points, more than {MAX_GRID}; use sampler tpe or random")
    total = _trials(source, trials if trials is not None else data.get("trials", grid_size), trials is not None, grid_size)
    space = Space(source, total, sampler, sampler_args, pruner, pruner_args, seed, heartbeat, params)
    _check_against_config(space, base, config_path, overrides, trust_checkpoint)
    return space


def _trials(source: str, value: Any, from_flag: bool, grid_size: int | None) -> int:
    where = "--trials" if from_flag else f"{source}: trials"
    if value is None:
        raise UserError(f"{source}: trials: missing; give the study's total number of trials (trials: 20), or pass --trials N")
    if not _whole(value) or value < 1:
        raise UserError(f"{where}: must be a whole number of at least 1, got {value!r}")
    if value > MAX_TRIALS:
        default = "" if from_flag or grid_size is None or value != grid_size else f" (the grid's {grid_size} points)"
        raise UserError(f"{where}: {value}{default} trials is more than the {MAX_TRIALS} a study holds (its slots are made up front); give at most {MAX_TRIALS}")
    if grid_size is not None and value > grid_size:
        raise UserError(f"{where}: {value} trials, but the grid has only {grid_size} points; lower it (or leave it out: the whole grid)")
    return value


def _kind(source: str, key: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, dict]:
    """``"tpe"`` or ``{type: tpe, args: {...}}`` -> (type, args), the args checked against the Optuna class."""
    args: Any = {}
    if isinstance(value, dict):
        unknown = [k for k in value if k not in ("type", "args")]
        if unknown:
            raise UserError(f"{source}: {key}.{unknown[0]}: unknown{closest(unknown[0], ('type', 'args'), key + '.')}; write {{type, args}}")
        value, args = value.get("type"), value.get("args", {})
        if not isinstance(args, dict):
            raise UserError(f"{source}: {key}.args: must be a mapping of keyword arguments, got {type(args).__name__}")
    if value not in allowed:
        raise UserError(f"{source}: {key}: {value!r} is not one of {', '.join(allowed)}{closest(str(value), allowed)}")
    target = _optuna_class(key, value)
    if target is not None and args:
        accepted = set(inspect.signature(target).parameters) - {"self", "seed"}
        for name in args:
            if name not in accepted:
                raise UserError(f"{source}: {key}.args.{name}: {target.__name__} takes no such argument{closest(name, accepted, key + '.args.')}")
        try:
            json.dumps(args)
        except (TypeError, ValueError):
            raise UserError(f"{source}: {key}.args: must be plain values") from None
    return value, args


def _optuna_class(key: str, name: str):
    import optuna

    classes = {
        ("sampler", "tpe"): optuna.samplers.TPESampler,
        ("sampler", "random"): optuna.samplers.RandomSampler,
        ("pruner", "median"): optuna.pruners.MedianPruner,
        ("pruner", "hyperband"): optuna.pruners.HyperbandPruner,
    }
    return classes.get((key, name))


def _params(source: str, params: Any) -> tuple[Param, ...]:
    if not isinstance(params, dict) or not params:
        raise UserError(f"{source}: params: give the keys to search, e.g. params: {{optimizer.args.lr: {{low: 1.0e-4, high: 0.1, log: true}}}}")
    return tuple(_param(source, key, spec) for key, spec in params.items())


def _param(source: str, key: str, spec: Any) -> Param:
    where = f"{source}: params.{key}"
    if not isinstance(spec, dict):
        raise UserError(f"{where}: must be {{low, high}} (with log or step) or {{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        extra = [k for k in spec if k != "choices"]
        if extra:
            raise UserError(f"{where}: choices cannot be combined with {extra[0]}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}.choices: must be a non-empty list")
        if any(isinstance(choice, dict) for choice in choices):  # paired values: {optimizer.args.lr: 0.01, arch.args.dropout: 0.5}
            for choice in choices:
                if not isinstance(choice, dict) or not choice:
                    raise UserError(f"{where}.choices: {choice!r}: when one choice is a mapping of key paths to values, all are")
            texts = [json.dumps(choice, sort_keys=True) for choice in choices]
            if len(set(texts)) != len(texts):
                raise UserError(f"{where}.choices: a value is listed twice")
            return Param(key, "choices", choices=tuple(texts), mapped=True)
        for choice in choices:
            if choice is not None and not isinstance(choice, (str, bool, int, float)):
                raise UserError(f"{where}.choices: {choice!r} is not a number, string, boolean or null (Optuna's categorical values)")
            if isinstance(choice, float) and not math.isfinite(choice):
                raise UserError(f"{where}.choices: {choice!r} is not a finite number")
        if len({json.dumps(choice) for choice in choices}) != len(choices):
            raise UserError(f"{where}.choices: a value is listed twice")
        return Param(key, "choices", choices=tuple(choices))
    for name in spec:
        if name not in RANGE_KEYS:
            raise UserError(f"{where}: unknown key {name!r}{closest(name, (*RANGE_KEYS, 'choices'), '')}; a range has low, high, log, step")
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    for name, value in (("low", low), ("high", high)):
        if value is None:
            raise UserError(f"{where}.{name}: missing; a range needs low and high")
        if not _number(value):
            raise UserError(f"{where}.{name}: must be a finite number, got {value!r}")
    if not isinstance(log, bool):
        raise UserError(f"{where}.log: must be true or false, got {log!r}")
    if not low < high:
        raise UserError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise UserError(f"{where}: log: true needs low above 0, got {low}")
    if log and step is not None:
        raise UserError(f"{where}: log and step cannot be combined (Optuna samples one or the other)")
    integer = _whole(low) and _whole(high) and (step is None or _whole(step))
    if step is not None and (not _number(step) or step <= 0):
        raise UserError(f"{where}.step: must be a positive number, got {step!r}")
    if integer:
        return Param(key, "int", low, high, log, step)
    return Param(key, "float", float(low), float(high), log, float(step) if step is not None else None)


def _as_config_type(param: Param, config: dict) -> Param:
    """``{low: 0, high: 1}`` for a key whose config value is a float (a dropout) is a float range, not {0, 1}."""
    node: Any = config
    for part in param.key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return param
    if param.kind == "int" and isinstance(node, float):
        return Param(param.key, "float", float(param.low), float(param.high), param.log, float(param.step) if param.step is not None else None)
    return param


FIXED_KEYS = {
    "name": "the sweep's folder is <save_dir>/<name>/sweeps/<study>",
    "trainer.save_dir": "the trials' folders are the sweep's (trial-NNNN); set it for the whole sweep as an override",
    "trainer.monitor": "it is the study's objective; one sweep optimises one value",
}
"""Keys a parameter may not vary: a trial would ignore the value (or the study would compare unlike values)."""


def _check_fixed_keys(space: Space) -> None:
    for param in space.params:
        for key, why in FIXED_KEYS.items():
            if param.key == key or key.startswith(param.key + ".") or param.key.startswith(key + "."):
                raise UserError(f"{space.source}: params.{param.key}: a sweep cannot vary {key} ({why}); remove it from params")


def _check_against_config(space: Space, base: Config, config_path: str, overrides: list[str], trust_checkpoint: bool = False) -> None:
    """Every value the space can give (each choice, each end of a range) through the checks
    ``train.py`` makes before it creates anything: the config's typed settings and names, the trust
    rule (unless ``--trust-checkpoint``), and the cheap, side-effect-free checks of the objects the
    parameter's section builds (:func:`_check_objects`). A key the config does not take, or a value
    it refuses, is said now and not in trial 7."""
    _check_fixed_keys(space)
    data = read_config(config_path)  # through the bases it extends
    for param in space.params:
        for value in param.examples():
            try:
                config = Config.from_dict(data, config_path, [*overrides, *space.overrides({param.key: value})])
                if not trust_checkpoint:
                    config.check_checkpoints_resumable()
                _check_objects(config, param.key.split(".")[0])
            except UserError as exc:
                raise UserError(f"{space.source}: params.{param.key} = {value!r}: {exc}") from None
    mode, metric = base.monitor()
    if metric is None:
        raise UserError(f"{config_path}: trainer.monitor is off; a sweep optimises the monitored value: set trainer.monitor, e.g. 'max val_accuracy'")
    _check_optuna_arguments(space, base.settings.epochs)


def _check_objects(config: Config, section: str) -> None:
    """The objects ``section`` (``arch``, ``optimizer``, ...) makes, built as cheaply as they can be:
    the model on the meta device (no memory, no weights), the optimizer and scheduler over it, the
    data loader's counts (``BaseDataLoader``'s own check; its data is never read). Only a refusal
    of a value (a ``UserError``) counts: anything else is for the trial to show, with its traceback."""
    import torch

    from app.config import build_loss, build_lr_scheduler, build_metrics, build_optimizer

    if section == "data_loader":
        _check_loader_counts(config)
    elif section in ("arch", "optimizer", "lr_scheduler"):
        def build(device: str) -> None:
            with torch.device(device):
                model = config.init_obj("arch")
                if section != "arch" and isinstance(model, torch.nn.Module):
                    optimizer = build_optimizer(config, model)
                    if section == "lr_scheduler" and config["lr_scheduler"] is not None:
                        build_lr_scheduler(config, optimizer)

        try:
            build("meta")
        except UserError:
            _refused_only(lambda: build("cpu"))  # said only if it is refused for real, not for something the meta device cannot do
        except Exception:  # noqa: BLE001 - not a refused value: the trial shows it, with its traceback
            return
    elif section in ("loss", "metrics"):
        _refused_only(lambda: build_loss(config) if section == "loss" else build_metrics(config))


def _refused_only(build) -> None:
    """``build()``, its ``UserError`` (a value refused) raised, any other exception left for the trial to show."""
    try:
        build()
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - a bug or a limit of the check, not a refused value
        return


def _check_loader_counts(config: Config) -> None:
    from app.config.names import resolve_type
    from base.base_data_loader import BaseDataLoader, check_loader_counts

    node = config["data_loader"]
    target = resolve_type("data_loader", node["type"], config.source, config.trusted)
    if not (isinstance(target, type) and issubclass(target, BaseDataLoader)):
        return
    try:
        bound = inspect.signature(target).bind_partial(**(node.get("args") or {}))
    except TypeError:
        return  # the config's own argument check has said what is wrong
    defaults = {name: p.default for name, p in inspect.signature(target).parameters.items()}
    args = {**defaults, **bound.arguments}
    if "batch_size" in args and "num_workers" in args:
        try:
            check_loader_counts(args["batch_size"], args["num_workers"])
        except UserError as exc:
            raise UserError(f"{config.source}: {exc}") from None


def _check_optuna_arguments(space: Space, epochs: int) -> None:
    """The sampler's and the pruner's ``args`` as Optuna takes them: made, and tried on a study in
    memory (two trials of the space's own distributions, one report and one pruning question), so
    ``n_startup_trials: -5`` or a string where a number goes is said before the study is created."""
    for key, name, args in (("sampler", space.sampler, space.sampler_args), ("pruner", space.pruner, space.pruner_args)):
        target = _optuna_class(key, name)
        if target is None or not args:
            continue
        params = inspect.signature(target).parameters
        for arg in args:
            if "Callable" in str(params[arg].annotation):
                raise UserError(f"{space.source}: {key}.args.{arg}: {target.__name__} takes a function there, which a space (plain data) cannot give; leave it out")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _try_on_a_study(space, key, epochs)
        except (TypeError, ValueError, OverflowError) as exc:
            raise UserError(f"{space.source}: {key}.args: Optuna's {target.__name__} refuses them: {first_line(exc)}; fix the value") from None


def _try_on_a_study(space: Space, key: str, epochs: int) -> None:
    """Trials of the space on a study in memory with the ``key`` (sampler or pruner) the space makes:
    two, and for TPE enough to pass its random start-up, so its own arguments are used."""
    import optuna

    sampler = space.make_sampler(0) if key == "sampler" else optuna.samplers.RandomSampler(seed=0)
    pruner = space.make_pruner(epochs) if key == "pruner" else optuna.pruners.NopPruner()
    study = optuna.create_study(sampler=sampler, pruner=pruner)
    startup = space.sampler_args.get("n_startup_trials", 10) if key == "sampler" and space.sampler == "tpe" else 0
    for step in range(2 + (startup if _whole(startup) and 0 <= startup <= 10 else 0)):  # past TPE's random start-up
        trial = study.ask({param.key: param.distribution() for param in space.params})
        trial.report(0.5, 1)
        trial.should_prune()
        study.tell(trial, float(step))
