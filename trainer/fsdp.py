"""FSDP2 (``torch.distributed.fsdp.fully_shard``): weights, gradients and optimizer state sharded
over the processes, for models bigger than one GPU (``trainer.strategy: "fsdp"`` under torchrun).

Per process, a model of P parameters trained with Adam holds about ``16 * P / world`` bytes of
fp32 weights, gradients and the two moments (DDP holds ``16 * P``), plus, briefly, the gathered
weights of the module being computed. :func:`shard_model` shards each named module (default:
every child of the root that has parameters), then the root; ``trainer.amp`` becomes a
``MixedPrecisionPolicy`` (bf16 or fp16 compute, fp32 gradient reduction),
``trainer.fsdp_reshard_after_forward`` and ``trainer.fsdp_cpu_offload`` are passed on.

Checkpoints of a sharded model are DCP snapshots: the weights', optimizer's and EMA's parts give
their tensors as DCP wants them (``base/training_state.py``, ``trainer/ema.py``), and the
snapshot store writes every process's shards (``utils/checkpoints/snapshots.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from base.settings import TrainerSettings
from trainer.precision import AMP_DTYPES


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
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=AMP_DTYPES[settings.amp], reduce_dtype=torch.float32)
    if settings.fsdp_cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    modules = dict(model.named_modules())
    names = settings.fsdp_shard
    if names is None:
        names = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    for name in names:
        fully_shard(modules[name], **options)  # names checked by prepare_model
    fully_shard(model, **options)
