"""The model as each strategy runs it: one process, DDP (replicated) or FSDP2 (sharded).

:func:`prepare_model` moves the model to its device and applies, in this order: channels-last,
activation checkpointing of the named modules, SyncBatchNorm (DDP), the strategy's wrapper,
and ``torch.compile``. It must run before the optimizer is built: FSDP replaces parameters
with sharded ones, which are the ones the optimizer must hold.

The user's module stays the one to save, load and evaluate (:attr:`PreparedModel.module`);
DDP's wrapper is only used to train, so that evaluation on uneven shards needs no collective.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from base.freezing import frozen_names, refreeze
from base.settings import TrainerSettings
from trainer.precision import NO_CONTEXT
from utils import distributed
from utils.errors import UserError


@dataclass
class PreparedModel:
    """The user's model as the strategy runs it: the module holding the weights, and what training and
    evaluation call (DDP, FSDP, compile around it)."""

    module: nn.Module
    """The user's model (converted and sharded in place as the strategy needs): weights live here."""
    train_forward: nn.Module
    """What the train step calls (DDP and/or compile around ``module``)."""
    eval_forward: nn.Module
    """What evaluation calls."""
    ddp: DistributedDataParallel | None = None
    strategy: str = "single"

    def no_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) for micro-batches that do not
        end an accumulation group."""
        if self.strategy == "fsdp":
            self.module.set_requires_gradient_sync(sync)
            return NO_CONTEXT
        return NO_CONTEXT if sync or self.ddp is None else self.ddp.no_sync()

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    @property
    def collective_forward(self) -> bool:
        """Whether every forward is a collective (FSDP gathers the weights it computes with)."""
        return self.strategy == "fsdp"

    @property
    def checkpoint_store(self) -> str:
        """The checkpoint store this strategy needs: DCP snapshots when each process holds a shard of
        the weights (FSDP), else files (``utils/checkpoints/``)."""
        return "snapshots" if self.strategy == "fsdp" else "files"


def prepare_model(model: nn.Module | PreparedModel, settings: TrainerSettings, device: torch.device, wrap: bool = True) -> PreparedModel:
    """Wrap ``model`` for ``settings.strategy`` (see the module docstring); a prepared model is returned as it is.

    ``wrap=False`` (several optimizers, ``trainer/optimizers.py``): no DDP wrapper under torchrun
    (strategy ``"replicated"``): rank 0's weights are broadcast once here and the engine averages
    the gradients itself; FSDP is refused."""
    if isinstance(model, PreparedModel):
        return model
    check_module_names(model, "trainer.fsdp_shard", settings.fsdp_shard or [])  # also in one process: a typo shows at once
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    apply_activation_checkpointing(model, settings.activation_checkpointing)
    strategy = "single"
    wrapped: nn.Module = model
    ddp = None
    if distributed.is_distributed():
        strategy = settings.strategy
        if strategy == "fsdp" and not wrap:
            raise UserError('trainer.strategy: "fsdp" cannot shard a model trained by several optimizers; use "ddp" (each process holds the whole model)')
        if strategy == "fsdp":
            from trainer.fsdp import shard_model

            shard_model(model, settings, device)
        else:
            if settings.sync_batchnorm:
                frozen = frozen_names(model)
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                refreeze(model, frozen)  # a frozen BatchNorm is a new SyncBatchNorm now: frozen again
            if wrap:
                device_ids = [device] if device.type == "cuda" else None
                ddp = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=settings.find_unused_parameters)
                wrapped = ddp
            else:
                from trainer.optimizers import broadcast_state

                broadcast_state(model)
                strategy = "replicated"
    evaluated: nn.Module = model
    if settings.compile:
        wrapped = torch.compile(wrapped)
        evaluated = wrapped if ddp is None else model
    return PreparedModel(model, wrapped, evaluated, ddp, strategy)


def apply_activation_checkpointing(model: nn.Module, names: list[str]) -> None:
    """Recompute the named modules' activations in backward instead of keeping them.

    Each named module is wrapped with torch's ``checkpoint_wrapper`` (non-reentrant
    ``torch.utils.checkpoint``); checkpoints strip the wrapper's ``_checkpoint_wrapped_module.``
    from weight names, so they load with or without it.
    """
    if not names:
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    check_module_names(model, "trainer.activation_checkpointing", names)
    modules = dict(model.named_modules())
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, checkpoint_wrapper(modules[name], checkpoint_impl=CheckpointImpl.NO_REENTRANT))


def check_module_names(model: nn.Module, key: str, names: list[str]) -> None:
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or name == "":
            raise UserError(f"{key}: the model has no module {name!r}; name submodules such as {[n for n in modules if n][:5]}")
