"""What the config's ``logger`` section asks of the experiment trackers, resolved for one run.

The names a run may track to are :data:`TRACKERS`; ``tensorboard`` is written by
``logger/tensorboard.py`` itself, the others by an adapter in this package over the library's
own API, installed as an optional extra (``pip install -e .[mlflow]``). Nothing here imports
those libraries: a run that names neither never pays for them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

TRACKERS = ("tensorboard", "mlflow", "wandb")
"""Every tracker name ``logger.trackers`` accepts."""
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}
"""A tracker's module, which is also the name of the ``pip install -e .[extra]`` that installs it."""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a ``None`` entry in ``sys.modules`` blocks an import)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_extras(names: list[str]) -> list[str]:
    """The trackers among ``names`` whose library is not installed."""
    return [name for name in names if name in EXTRAS and not installed(EXTRAS[name])]


@dataclass(frozen=True)
class TrackerSettings:
    """The resolved ``logger`` section, with what the defaults depend on (the save dir, the experiment name)."""

    names: tuple[str, ...]
    """The trackers other than TensorBoard, in the order the config names them."""
    save_dir: Path
    experiment: str
    mlflow: dict
    wandb: dict
    log_checkpoints: bool = False
    finish_timeout: float = 60.0

    @classmethod
    def from_config(cls, config: dict) -> TrackerSettings:
        """From a resolved config (plain data; a config read back from a checkpoint or ``cv.json`` too)."""
        section = config.get("logger") if isinstance(config.get("logger"), dict) else {}
        trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
        names = tuple(name for name in section.get("trackers", ["tensorboard"]) if name in EXTRAS)
        save_dir = Path(os.path.abspath(os.path.expanduser(str(trainer.get("save_dir") or "saved/"))))
        return cls(
            names=names,
            save_dir=save_dir,
            experiment=str(config.get("name") or "experiment"),
            mlflow=dict(section.get("mlflow") or {}),
            wandb=dict(section.get("wandb") or {}),
            log_checkpoints=bool(section.get("log_checkpoints", False)),
            finish_timeout=float(section.get("finish_timeout", 60.0)),
        )

    @property
    def tracking_uri(self) -> str:
        """``logger.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store in the save dir."""
        return self.mlflow.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.save_dir / 'mlflow.db'}"

    @property
    def mlflow_experiment(self) -> str:
        return self.mlflow.get("experiment") or self.experiment

    @property
    def wandb_mode(self) -> str:
        """``logger.wandb.mode``, else ``$WANDB_MODE``, else ``offline``: nothing leaves the machine unless asked."""
        return self.wandb.get("mode") or os.environ.get("WANDB_MODE") or "offline"

    @property
    def wandb_project(self) -> str:
        return self.wandb.get("project") or self.experiment
