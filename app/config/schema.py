"""What a config may contain: the top-level keys, object nodes, and where names are looked up.

The ``trainer.*`` keys are declared with the engine's typed settings (``base/settings.py``); the
top-level keys below use the same :class:`Setting` record, so every key's type, default, doc and
check live together in one declaration.
"""

from __future__ import annotations

import copy
from typing import Any

from base.settings import SETTINGS, Setting
from logger.trackers.settings import TRACKERS
from utils.errors import closest

NoneType = type(None)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _folder_name(value: str) -> str | None:
    if not value or value.strip() != value or value in (".", "..") or "/" in value or "\\" in value or not value.isprintable():
        return f"{value!r} is not a folder name; use letters, digits, '-', '_' or '.'"
    if len(value.encode()) > 255:
        return f"too long for a folder name ({len(value.encode())} bytes, at most 255); choose a shorter name"
    return None


def _seed(value: int) -> str | None:
    return None if 0 <= value < 2**32 else f"must be between 0 and 2**32 - 1 ({2**32 - 1}, the seeds NumPy takes), got {value}"


def _trackers(value: list) -> str | None:
    for item in value:
        if not isinstance(item, str):
            return f"must be a list of tracker names ({', '.join(TRACKERS)}), got {item!r} in it"
        if item not in TRACKERS:
            return f"unknown tracker {item!r}{closest(item, TRACKERS) or ''}; the trackers are {', '.join(TRACKERS)}"
    if len(set(value)) != len(value):
        return f"names a tracker twice: {value!r}"
    return None


def _not_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty (null: the default)"


def _seconds(value: float) -> str | None:
    return None if value > 0 else f"must be a positive number of seconds, got {value}"


SCHEMA: dict[str, Setting] = {
    "name": Setting((str,), "experiment", "Experiment name; runs go to `<save_dir>/<name>/<run_id>/`.", _folder_name),
    "seed": Setting((int,), 0, "Seeds Python, NumPy and torch once; epoch e's data order depends only on seed and e.", _seed),
    "device": Setting((str,), "auto", '`"auto"` (CUDA, then MPS, then CPU), `"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"`.'),
    "arch": Setting((dict,), REQUIRED, "The model: `{type, args}`, looked up in `model/`, then `torch.nn`."),
    "data_loader": Setting((dict,), REQUIRED, "The training data loader: `{type, args}`, looked up in `data_loader/`."),
    "loss": Setting((str, dict), REQUIRED, "A function name from `model/loss.py`, or `{type, args}` (`model/loss.py`, then `torch.nn`)."),
    "metrics": Setting(
        (list,), [], "Metric functions from `model/metric.py` or torchmetrics classes: names, or `{type, args, name}`."
    ),
    "optimizer": Setting(
        (dict,),
        REQUIRED,
        "`{type, args, param_groups}` from `torch.optim`; gets trainable parameters only. Several: a mapping of names to "
        "`{type, args, params, every}` ([docs/optimizers.md](optimizers.md)).",
    ),
    "lr_scheduler": Setting(
        (dict, NoneType),
        None,
        "`{type, args, interval}` from `torch.optim.lr_scheduler`, or null; with several optimizers, a mapping of their names to them.",
    ),
    "trainer": Setting((dict,), {}, "Training-loop settings, see the `trainer.*` keys."),
    "logger": Setting((dict,), {}, "Experiment trackers (TensorBoard, MLflow, Weights & Biases), see the `logger.*` keys."),
}

MLFLOW_SCHEMA: dict[str, Setting] = {
    "tracking_uri": Setting(
        (str, NoneType),
        None,
        "MLflow's store: any tracking URI (`http://host:5000`, `sqlite:///path.db`, `databricks`); "
        "null: `$MLFLOW_TRACKING_URI` when set, else `sqlite:///<save_dir>/mlflow.db` (artifacts in `<save_dir>/mlartifacts`).",
        _not_empty,
    ),
    "experiment": Setting((str, NoneType), None, "MLflow experiment name (null: the config's `name`).", _not_empty),
}

WANDB_SCHEMA: dict[str, Setting] = {
    "project": Setting((str, NoneType), None, "W&B project (null: the config's `name`).", _not_empty),
    "entity": Setting((str, NoneType), None, "W&B entity, a user or team (null: your default one).", _not_empty),
    "mode": Setting(
        (str, NoneType),
        None,
        '`"offline"` (files in the run directory; `wandb sync` uploads them), `"online"` or `"disabled"`; '
        'null: `$WANDB_MODE` when set, else `"offline"`.',
        choices=("offline", "online", "disabled", None),
    ),
}

LOGGER_SCHEMA: dict[str, Setting] = {
    "trackers": Setting(
        (list,),
        ["tensorboard"],
        "Where a run is tracked besides `train.log` and `metrics.jsonl`: any of `tensorboard`, `mlflow` (`pip install -e .[mlflow]`), "
        "`wandb` (`pip install -e .[wandb]`). TensorBoard writes when it is listed and `trainer.tensorboard` is true.",
        _trackers,
    ),
    "mlflow": Setting((dict,), {key: spec.default for key, spec in MLFLOW_SCHEMA.items()}, "MLflow's settings, see the `logger.mlflow.*` keys."),
    "wandb": Setting((dict,), {key: spec.default for key, spec in WANDB_SCHEMA.items()}, "W&B's settings, see the `logger.wandb.*` keys."),
    "log_checkpoints": Setting((bool,), False, "Also upload the best checkpoint file to MLflow and W&B at the end (its path is always logged)."),
    "finish_timeout": Setting(
        (float,), 60, "Seconds the end of a run waits for trackers to send what is left; a tracker still busy then is left with a warning.", _seconds
    ),
}

SECTIONS: dict[str, dict[str, Setting]] = {"logger": LOGGER_SCHEMA, "logger.mlflow": MLFLOW_SCHEMA, "logger.wandb": WANDB_SCHEMA}
"""Mappings of documented keys below the top level (besides ``trainer``), by their dotted path."""

TRAINER_SCHEMA: dict[str, Setting] = {
    "type": Setting(
        (str,),
        "Trainer",
        "The Trainer class: the template's `Trainer`, or your subclass by full path `package.module:Name` "
        "(override `training_step` / `validation_step`).",
    ),
    "args": Setting((dict,), {}, "Keyword arguments of your Trainer subclass's own parameters (checked against its signature)."),
    **SETTINGS,
}
"""Every ``trainer.*`` key: the Trainer class and its own arguments, then the engine's typed settings
(``base/settings.py``), which become :class:`~base.settings.TrainerSettings`."""

LEGACY_KEYS = {
    "n_gpu": "n_gpu is not used here: set device (auto picks the GPU) and launch with torchrun --nproc_per_node=N for N GPUs "
    "(-d 0,1 picks which); the value was ignored",
}
"""Keys of victoresque/pytorch-template configs that are accepted with a one-line note."""

OBJECT_KEYS = {
    "arch": {"type", "args"},
    "data_loader": {"type", "args"},
    "loss": {"type", "args"},
    "optimizer": {"type", "args", "param_groups"},
    "lr_scheduler": {"type", "args", "interval"},
    "metrics": {"type", "args", "name", "output", "target"},
}

OBJECT_KEY_DOCS = {
    "type": "every object node; required. A class or function name looked up in the modules listed below, "
    'or a full path `"package.module:Name"`.',
    "args": "every object node; default `{}`. Keyword arguments for `type`; unknown names are errors.",
    "param_groups": 'optimizer only; default `[]`. `[{"params": "prefix" or ["prefixes"], "lr": ..., ...}]`: '
    "parameters whose names start with a prefix get their own group and settings; the rest use `args`.",
    "params": "an optimizer of several only; required. The module-name prefix (or list of prefixes) of the trainable parameters it owns, "
    "each owned exactly once (docs/optimizers.md).",
    "every": "an optimizer of several only; default 1. It steps at engine steps n with (n + 1) % every == 0.",
    "interval": 'lr_scheduler only; default `"epoch"`. `"step"` steps the scheduler after every optimizer step.',
    "name": "metrics entries only; default the function or class name. The name the metric is logged under.",
    "output": "metrics entries only; default the whole output. The field of a structured output the metric takes: "
    '`"cls"` for `output["cls"]`, `"heads.cls"` nested, `"0"` a tuple\'s first (see `trainer/fields.py`).',
    "target": 'metrics entries only; default the whole target. The field of a structured target the metric takes, like `"output"`.',
}

NAMESPACES = {
    "arch": ("model", "torch.nn"),
    "data_loader": ("data_loader",),
    "loss": ("model.loss", "torch.nn"),
    "metrics": ("model.metric", "torchmetrics", "torchmetrics.classification", "torchmetrics.regression"),
    "optimizer": ("torch.optim",),
    "lr_scheduler": ("torch.optim.lr_scheduler",),
    "trainer": ("trainer",),
    "transforms": ("torchvision.transforms.v2",),
}


def with_defaults(data: dict) -> dict:
    """A deep copy of ``data`` with every documented key filled in."""
    data = copy.deepcopy(data)
    for key, spec in SCHEMA.items():
        if key not in data and spec.default is not REQUIRED:
            data[key] = copy.deepcopy(spec.default)
    if isinstance(data.get("trainer"), dict):
        for key, spec in TRAINER_SCHEMA.items():
            data["trainer"].setdefault(key, copy.deepcopy(spec.default))
    for path, schema in SECTIONS.items():
        section = section_of(data, path)
        if isinstance(section, dict):
            for key, spec in schema.items():
                section.setdefault(key, copy.deepcopy(spec.default))
    return data


def section_of(data: dict, path: str) -> object:
    """The value at a dotted ``path`` of ``data`` (None when a part is missing or not a mapping)."""
    node: object = data
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


BUILT_IN_COLUMNS = ("epoch", "loss", "lr", "samples_per_sec", "data_wait")
"""Columns of every epoch row; ``val_<name>`` and ``lr_group<i>`` too."""


def reserved_metric_name(name: str) -> str | None:
    """Why ``name`` cannot name a metric (it would overwrite a column every row has), or None."""
    if not name.strip() or name != name.strip() or " " in name:
        return f"{name!r} is not a column name; use letters, digits and '_'"
    if name in BUILT_IN_COLUMNS or name.startswith(("val_", "lr_group")):
        return f"{name!r} would overwrite a column every epoch row has ({', '.join(BUILT_IN_COLUMNS)}, val_*, lr_group*); give the metric another name"
    return None


def metric_name(entry: str | dict) -> str:
    """The name a metric is logged under: its ``name``, else its function or class name."""
    name = entry if isinstance(entry, str) else entry.get("name") or entry["type"]
    return name.rpartition(":")[2]


__all__ = ["BUILT_IN_COLUMNS", "LEGACY_KEYS", "LOGGER_SCHEMA", "NAMESPACES", "OBJECT_KEYS", "OBJECT_KEY_DOCS", "REQUIRED", "SCHEMA", "SECTIONS", "TRAINER_SCHEMA", "metric_name", "reserved_metric_name", "section_of", "with_defaults"]
