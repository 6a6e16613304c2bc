"""Typed training-loop settings: the ``trainer.*`` keys as one frozen dataclass.

Each key is declared once, here: its type (the annotation), default, one-line doc and range
check (``setting(...)``). The config package validates a config's ``trainer`` mapping against
these declarations, builds :class:`TrainerSettings` once, and generates the README's reference
table from them; the engine (``base/``, ``trainer/``) takes the dataclass and never sees the
config. A Trainer can therefore be built from plain Python, e.g. in a notebook or a benchmark:
``TrainerSettings(epochs=3, save_dir="/tmp/runs", tensorboard=False)``.
"""

from __future__ import annotations

import importlib.util
import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

Check = Callable[[Any], "str | None"]  # a value -> the problem with it ("must be at least 1"), or None


@dataclass(frozen=True)
class Setting:
    """One documented key: what it accepts, its default, what it means and how its value is checked."""

    types: tuple
    default: Any
    doc: str
    check: Check | None = None
    choices: tuple | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or None."""
        if not _has_type(value, self.types):
            return f"expected {type_names(self.types)}, got {type(value).__name__} {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {list(self.choices)}, got {value!r}"
        if self.check is not None and value is not None:
            return self.check(value)
        return None


def _has_type(value: Any, accepted: tuple) -> bool:
    if isinstance(value, bool):
        return bool in accepted
    if isinstance(value, int) and float in accepted:
        return True
    return isinstance(value, accepted)


def type_names(accepted: tuple) -> str:
    """``(float, NoneType)`` -> ``"number or null"``, as a config author reads types."""
    names = {"dict": "mapping", "NoneType": "null", "float": "number"}
    return " or ".join(dict.fromkeys(names.get(t.__name__, t.__name__) for t in accepted))


# -- checks --------------------------------------------------------------------------------------


def at_least(low: int) -> Check:
    return lambda value: None if value >= low else f"must be at least {low}, got {value}"


def zero_or_more(value: Any) -> str | None:
    return None if value >= 0 else f"must be 0 (off) or positive, got {value}"


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be null or positive, got {value}"


def strictly_between_0_and_1(value: Any) -> str | None:
    return None if 0.0 < value < 1.0 else f"must be null or a number strictly between 0 and 1 (e.g. 0.999), got {value}"


def folder_problem(value: str) -> str | None:
    if not value.strip():
        return "must name a folder, got an empty string"
    too_long = [part for part in value.split("/") if len(part.encode()) > 255]
    if too_long:
        return f"the folder name {too_long[0][:40]!r}... is too long (at most 255 bytes)"
    if value.startswith("~"):
        try:
            Path(value).expanduser()
        except RuntimeError:  # ~name of a user this machine does not have
            return f"{value.split('/')[0]!r} names no user of this machine; write the folder's path out"
    return None


def non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty (null: the default)"


def monitor_problem(value: str) -> str | None:
    try:
        parse_monitor(value)
    except ValueError:
        return f'must be "min <metric>", "max <metric>" or "off", got {value!r}'
    return None


def names_problem(value: list) -> str | None:
    bad = [item for item in value if not isinstance(item, str) or not item]
    return f"must be a list of module names (strings), got {bad[0]!r} in it" if bad else None


EXPORT_FORMATS = ("pt2", "onnx")


def export_problem(value: list) -> str | None:
    """Known formats, each once; ONNX's extra installed (checked when the run starts, not after it ends)."""
    bad = [item for item in value if item not in EXPORT_FORMATS]
    if bad:
        return f'must be a list of "pt2" and "onnx" (the formats of the end-of-run export), got {bad[0]!r} in it'
    if len(set(value)) != len(value):
        return f"names a format twice: {value!r}"
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if "onnx" in value and importlib.util.find_spec(name) is None]
    if missing:
        return f"an .onnx export needs {', '.join(missing)}, not installed here; install the onnx extra: pip install -e '.[onnx]'"
    return None


PROFILE_KEYS = ("wait", "warmup", "active")


def profile_problem(value: dict) -> str | None:
    if set(value) != set(PROFILE_KEYS) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        return f"must be null or {{wait: int, warmup: int, active: int}} (optimizer steps), got {value!r}"
    if value["active"] < 1 or value["wait"] < 0 or value["warmup"] < 0:
        return f"needs active >= 1 and wait, warmup >= 0, got {value!r}"
    return None


def parse_monitor(monitor: str) -> tuple[str, str | None]:
    """``"min val_loss"`` -> ``("min", "val_loss")``; ``"off"`` -> ``("off", None)``."""
    if monitor == "off":
        return "off", None
    mode, _, metric = monitor.partition(" ")
    if mode not in ("min", "max") or not metric or " " in metric:
        raise ValueError(monitor)
    return mode, metric


def setting(default: Any, doc: str, check: Check | None = None, choices: tuple | None = None) -> Any:
    """A dataclass field carrying its documentation and check (types come from the annotation)."""
    meta = {"default": default, "doc": doc, "check": check, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainerSettings:
    """Everything the training loop needs to know, with its defaults (the README table is generated from this)."""

    epochs: int = setting(10, "Number of epochs to train (an epoch is `len_epoch` batches when set).", at_least(1))
    save_dir: str = setting("saved/", "Root folder of run directories (`~` is your home).", folder_problem)
    save_period: int = setting(1, "Write `checkpoints/epoch-N.pth` every N epochs (0: never).", zero_or_more)
    keep_last: int = setting(0, "Keep only the K newest `epoch-N.pth` (0: keep all); `last.pth` and `best.pth` always stay.", zero_or_more)
    verbosity: int = setting(1, "Console: 0 warnings, 1 info, 2 debug (`train.log` always gets info, and debug at 2).", choices=(0, 1, 2))
    monitor: str = setting(
        "min val_loss", '`"min <metric>"`, `"max <metric>"` or `"off"`; picks `best.pth` and drives early stop.', monitor_problem
    )
    early_stop: int = setting(0, "Stop after this many epochs without improvement of the monitored metric (0: never).", zero_or_more)
    early_stop_reset: bool | None = setting(
        None, "On resume, restart the early-stop count: null only when the checkpoint's run had stopped early, true always, false never."
    )
    tensorboard: bool = setting(True, "Write TensorBoard event files into the run directory.")
    log_step: int = setting(50, "Log the training loss (TensorBoard and console) every N optimizer steps.", at_least(1))
    log_images: bool = setting(False, "Write a grid of one input batch to TensorBoard every epoch (image inputs only).")
    log_histograms: bool = setting(False, "Write parameter histograms to TensorBoard every epoch.")
    progress_bar: bool = setting(True, "Show tqdm bars on a terminal (never on non-zero ranks or when output is not a terminal).")
    amp: str | None = setting(None, 'Mixed precision: `"bf16"`, `"fp16"` (with a GradScaler) or null.', choices=("bf16", "fp16", None))
    accumulate_steps: int = setting(1, "Micro-batches per optimizer step (gradient accumulation).", at_least(1))
    clip_grad_norm: float | None = setting(None, "Clip the total gradient norm to this value (null: no clipping).", positive)
    compile: bool = setting(False, "Wrap the model in `torch.compile`.")
    channels_last: bool = setting(False, "Use the channels-last memory format for the model and 4-D inputs.")
    len_epoch: int | None = setting(None, "Iteration-based training: exactly this many batches per epoch (null: one pass).", at_least(1))
    overfit_batches: int = setting(0, "Debug: train on the first N batches only, unshuffled, and validate on them (0: off).", zero_or_more)
    limit_batches: int = setting(0, "Debug: at most N batches per training and validation epoch (0: off).", zero_or_more)
    save_every_n_steps: int = setting(0, "Also write `last.pth` every N optimizer steps, resumable mid-epoch (0: off).", zero_or_more)
    async_save: bool = setting(False, "Write `.pth` checkpoints in a background thread: the loop pays only for a copy of the state (docs/clusters.md).")
    deterministic: bool = setting(False, "Turn on `torch.use_deterministic_algorithms`.")
    target_key: str | None = setting(
        None, 'Dict batches: the key holding the target (null: the first of "label", "labels", "target", "targets", "y").', non_empty
    )
    preflight: bool = setting(True, "Before the run directory exists, take one real batch through forward, loss, metrics and backward.")
    strategy: str = setting(
        "ddp", 'Under torchrun: `"ddp"` (replicated weights) or `"fsdp"` (sharded with FSDP2 `fully_shard`).', choices=("ddp", "fsdp")
    )
    sync_batchnorm: bool = setting(False, "Under DDP, convert BatchNorm layers to SyncBatchNorm.")
    find_unused_parameters: bool = setting(False, "Passed to DistributedDataParallel (models with unused branches).")
    fsdp_shard: list[str] | None = setting(
        None, "FSDP: names of the modules to shard separately before the root (null: every child module with parameters).", names_problem
    )
    fsdp_reshard_after_forward: bool = setting(True, "FSDP: free gathered weights after forward (less memory, one more all-gather).")
    fsdp_cpu_offload: bool = setting(False, "FSDP: keep sharded weights, gradients and optimizer state in CPU memory (CUDA runs).")
    activation_checkpointing: list[str] = setting(
        [], "Names of modules whose activations are recomputed in backward instead of kept (any strategy).", names_problem
    )
    ema_decay: float | None = setting(
        None, "Keep an exponential moving average of the weights with this decay (null: off).", strictly_between_0_and_1
    )
    ema_warmup: bool = setting(
        False, "EMA warm-up: use decay min(ema_decay, (1 + step) / (10 + step)) so early averages follow the weights."
    )
    ema_evaluate: bool = setting(True, "With EMA on: validation, `best.pth`, `test.py`, `predict.py` and export use the EMA weights.")
    profile: dict | None = setting(
        None, "`{wait, warmup, active}` optimizer steps: write a `torch.profiler` trace to `<run_dir>/profile/`.", profile_problem
    )
    load_strict: bool = setting(True, "Fine-tuning (`-r CKPT -c CONFIG`): require every weight to match by name.")
    load_exclude: list[str] = setting(
        [],
        "Fine-tuning: module-name prefixes whose weights keep the new model's initialisation, even where names and shapes match (a new head).",
        names_problem,
    )
    export: list[str] = setting(
        [],
        'When the run finishes: export the best model with its serving transforms as `model.pt2` and/or `model.onnx` in the run directory, checked (`["pt2", "onnx"]`; docs/export.md).',
        export_problem,
    )
    freeze: list[str] = setting(
        [], "Module-name prefixes to freeze (any model): out of the optimizer, and their BatchNorm statistics never change.", names_problem
    )

    # -- derived --------------------------------------------------------------------------

    @property
    def monitor_mode(self) -> str:
        return parse_monitor(self.monitor)[0]

    @property
    def monitor_metric(self) -> str | None:
        return parse_monitor(self.monitor)[1]

    def __post_init__(self) -> None:
        problems = [(name, spec.problem(getattr(self, name))) for name, spec in SETTINGS.items()]
        problems = [(name, problem) for name, problem in problems if problem]
        if problems:
            raise ValueError(f"trainer.{problems[0][0]}: {problems[0][1]}")


def _runtime_types(annotation: Any) -> tuple:
    """``int | None`` -> ``(int, NoneType)``; ``list[str]`` -> ``(list,)``; numbers accept ints."""
    parts = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    found = tuple(typing.get_origin(part) or part for part in parts)
    return found


def _settings() -> dict[str, Setting]:
    hints = typing.get_type_hints(TrainerSettings)
    table = {}
    for item in fields(TrainerSettings):
        meta = item.metadata
        default = item.default if item.default is not MISSING else item.default_factory()  # type: ignore[misc]
        table[item.name] = Setting(_runtime_types(hints[item.name]), default, meta["doc"], meta["check"], meta["choices"])
    return table


SETTINGS: dict[str, Setting] = _settings()
"""Every ``trainer.*`` key's :class:`Setting`, in declaration order."""
