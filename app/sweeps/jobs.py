"""What a sweep worker is asked to do (``SweepRequest``) and a trial it took (``Job``): the data the
study client, the slot taker and the trial runner pass between them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SweepRequest:
    """What ``sweep.py`` was asked to do: the config, the space, where the study lives and how each trial runs."""

    config: str
    space: str
    study: str | None = None
    storage: str | None = None
    trials: int | None = None
    folds: int | None = None
    overrides: list[str] = field(default_factory=list)
    trust_checkpoint: bool = False
    devices: str | None = None
    command: str = ""
    """What ran (for the trials' manifests)."""
    hint: str = ""
    """The command that continues the sweep (or adds a worker), as printed."""


@dataclass
class Job:
    """A trial this worker took: its slot (the sweep's number), Optuna's trial, its values."""

    slot: int
    number: int
    trial_id: int
    values: dict
    action: str
    """``new``, ``resume`` (its folder's checkpoint), ``tell`` (its run finished before its worker
    could tell the study: only the study is told)."""
