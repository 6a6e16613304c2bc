"""FSDP2 (``torch.distributed.fsdp.fully_shard``): weights, gradients and optimizer state sharded
over the processes, for models bigger than one GPU (``trainer.strategy: "fsdp"`` under torchrun).

Per process, a model of P parameters trained with Adam holds about ``16 * P / world`` bytes of
fp32 weights, gradients and the two moments (DDP holds ``16 * P``), plus, briefly, the gathered
weights of the module being computed. :func:`shard_model` shards each named module (default:
every child of the root that has parameters), then the root; ``trainer.amp`` becomes a
``MixedPrecisionPolicy`` (bf16 or fp16 compute, fp32 gradient reduction),
``trainer.fsdp_reshard_after_forward`` and ``trainer.fsdp_cpu_offload`` are passed on.

:class:`ShardedWeights` is the weights, optimizer and EMA state as one DCP state dict: shards
on save (nothing gathered), and on load any number of processes, sharded or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from base.settings import TrainerSettings
from utils.sharded_checkpoint import load_into

if TYPE_CHECKING:
    from trainer.ema import EMA

PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def shard_model(model: nn.Module, settings: TrainerSettings, device: torch.device) -> None:
    """Apply ``fully_shard`` to the chosen modules, then to the root (in place).

    Rank 0's initial weights and buffers go to every process first, as DDP does: each process
    built the model from its own seed, and a shard must be a piece of the same model.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)

    options: dict[str, Any] = {"reshard_after_forward": settings.fsdp_reshard_after_forward}
    if settings.amp:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=PRECISION[settings.amp], reduce_dtype=torch.float32)
    if settings.fsdp_cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    modules = dict(model.named_modules())
    names = settings.fsdp_shard
    if names is None:
        names = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    for name in names:
        fully_shard(modules[name], **options)  # names checked by prepare_model
    fully_shard(model, **options)


class ShardedWeights:
    """The ``model``, ``optimizer`` and ``ema`` parts of a sharded checkpoint, saved and loaded together."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None):
        self.module, self.optimizer, self.ema = module, optimizer, ema

    def state_dict(self) -> dict:
        """DCP's state: DTensor shards under FSDP, whole tensors otherwise (names without wrapper prefixes)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optimizer = get_state_dict(self.module, self.optimizer)  # creates the optimizer state if it has none yet
        state = {"model": model, "optimizer": optimizer}
        if self.ema is not None:
            state["ema"] = {"weights": dict(zip(self.ema.names, self.ema.averages))}  # the averages themselves
        return state

    def load(self, folder: Any, with_ema: bool) -> None:
        """Load the snapshot in ``folder``, resharded to this run's processes."""
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self.state_dict()
        if not with_ema:
            state.pop("ema", None)
        load_into(state, folder)  # the EMA averages are filled in place
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
