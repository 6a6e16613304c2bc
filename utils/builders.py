"""Build the loss, metrics, optimizer and LR scheduler from a :class:`Config`.

Shared by ``train.py`` and ``test.py`` so that both read a config the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from utils.checkpoint import clean_state_dict
from utils.config import Config, metric_name, resolve_type
from utils.errors import UserError


def build_loss(config: Config) -> Callable:
    """``"loss": "nll_loss"`` (a function) or ``{"type": "CrossEntropyLoss", "args": {...}}`` (a class or function)."""
    node = config["loss"]
    if isinstance(node, str):
        node = {"type": node}
    target = resolve_type("loss", node["type"], config.source)
    if inspect.isclass(target):
        return config.build("loss", node)
    return config.build_partial("loss", node)


def build_metrics(config: Config) -> dict[str, Callable]:
    """Metric functions by the name they are logged under."""
    metrics = {}
    for index, entry in enumerate(config["metrics"]):
        node = {"type": entry} if isinstance(entry, str) else entry
        metrics[metric_name(entry)] = config.build_partial(f"metrics.{index}", node)
    return metrics


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer over trainable parameters only, with optional per-prefix groups.

    ``optimizer.param_groups: [{"params": "backbone.", "lr": 1e-4}]`` puts every trainable
    parameter whose name starts with a given prefix in its own group with its own settings;
    the rest form the first group, with ``optimizer.args``.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise config.error("arch", "the model has no trainable parameter (is everything frozen?)")
    groups = []
    taken: set[str] = set()
    for index, spec in enumerate(config["optimizer"].get("param_groups") or []):
        prefixes = [spec["params"]] if isinstance(spec["params"], str) else list(spec["params"])
        chosen = {name for name, _ in named if name not in taken and name.startswith(tuple(prefixes))}
        params = [p for name, p in named if name in chosen]
        if not params:
            raise config.error(f"optimizer.param_groups.{index}.params", f"no trainable parameter name starts with {prefixes}")
        taken |= chosen
        groups.append({**{k: v for k, v in spec.items() if k != "params"}, "params": params})
    rest = [p for name, p in named if name not in taken]
    if rest:
        groups.insert(0, {"params": rest})
    return config.init_obj("optimizer", groups)


def build_lr_scheduler(config: Config, optimizer: torch.optim.Optimizer):
    """The LR scheduler, or None when ``lr_scheduler`` is null."""
    if config["lr_scheduler"] is None:
        return None
    return config.init_obj("lr_scheduler", optimizer)


def load_weights(model: nn.Module, state_dict: dict, strict: bool, source: str) -> list[str]:
    """Load weights by name; returns what was skipped. Mismatches are named; ``strict`` makes them errors."""
    state_dict = clean_state_dict(state_dict)
    own = model.state_dict()
    wrong_shape = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    problems = [
        f"missing {missing}" if missing else "",
        f"unexpected {unexpected}" if unexpected else "",
        f"different shapes {wrong_shape}" if wrong_shape else "",
    ]
    problems = [p for p in problems if p]
    if problems and strict:
        raise UserError(
            f"{source}: weights do not match the model: {'; '.join(problems)}; "
            f"fix arch, or set trainer.load_strict=false to load what matches"
        )
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in wrong_shape and k not in unexpected}, strict=False)
    return problems


__all__ = ["build_loss", "build_metrics", "build_optimizer", "build_lr_scheduler", "load_weights"]
