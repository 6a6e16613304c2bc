"""Frozen parts of any model: ``trainer.freeze: [module-name prefixes]``.

Frozen means frozen: the parameters get ``requires_grad=False`` (so the optimizer never holds
them, and EMA does not average them), and the modules stay in eval mode whatever calls
``model.train()`` (the Trainer, the Evaluator restoring the mode, DDP, a user's code), so their
BatchNorm running statistics and dropout do not change either. A prefix names a module and
everything inside it: ``"backbone"`` freezes ``backbone.layer1.0.bn1`` too.

Eval mode is kept by giving each frozen module its own ``train`` that always switches to eval:
``nn.Module.train`` reaches children through their ``train`` attribute, so this holds however
deep the call starts, with no hook in the loop.
"""

from __future__ import annotations

import types
from collections.abc import Sequence

from torch import nn

from utils.errors import UserError, closest


def matching_modules(model: nn.Module, prefixes: Sequence[str], key: str) -> list[str]:
    """The outermost modules named by ``prefixes`` (a prefix matches the module of that name and
    every module inside it); an unknown prefix is a :class:`UserError` naming ``key``."""
    names = [name for name, _ in model.named_modules() if name]
    found: list[str] = []
    for prefix in prefixes:
        matches = [name for name in names if name == prefix or name.startswith(prefix + ".")]
        if not matches:
            top = [name for name in names if name.count(".") <= 1]
            raise UserError(f"{key}: no module is named {prefix!r} or starts with '{prefix}.'{closest(prefix, top)}")
        found += matches
    return sorted(name for name in set(found) if not any(name.startswith(outer + ".") for outer in found))


def _always_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze(model: nn.Module, prefixes: Sequence[str], key: str = "trainer.freeze") -> list[str]:
    """Freeze the modules ``prefixes`` name (see the module docstring); returns their names."""
    frozen = matching_modules(model, prefixes, key)
    modules = dict(model.named_modules())
    for name in frozen:
        module = modules[name]
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        _keep_in_eval(module)
    return frozen


def frozen_names(model: nn.Module) -> list[str]:
    """The names of ``model``'s modules that :func:`freeze` froze."""
    return [name for name, module in model.named_modules() if is_frozen(module)]


def refreeze(model: nn.Module, names: Sequence[str]) -> None:
    """Keep the modules ``names`` in eval mode again after a conversion replaced them with new
    objects (``SyncBatchNorm.convert_sync_batchnorm`` does, for a frozen BatchNorm named itself)."""
    modules = dict(model.named_modules())
    for name in names:
        if name in modules and not is_frozen(modules[name]):
            _keep_in_eval(modules[name])


def _keep_in_eval(module: nn.Module) -> None:
    module.train = types.MethodType(_always_eval, module)
    module.eval()


def is_frozen(module: nn.Module) -> bool:
    train = module.__dict__.get("train")
    return isinstance(train, types.MethodType) and train.__func__ is _always_eval
