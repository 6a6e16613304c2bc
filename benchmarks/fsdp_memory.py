"""Per-process memory of weights, gradients and optimizer state: FSDP against DDP.

    torchrun --standalone --nproc_per_node=2 benchmarks/fsdp_memory.py [--width 2048 --layers 4]

Builds a stack of ``Linear(width, width)`` layers (4 x 2048 x 2048 is 16.8M parameters), prepares
it as ``train.py`` does for each strategy (``trainer/parallel.py``), takes one AdamW step on
random data and counts the bytes each process holds: its parameters (local shards under FSDP),
their gradients, and the optimizer's state. Temporary buffers (DDP's gradient buckets, FSDP's
briefly gathered weights) are not counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from base.settings import TrainerSettings  # noqa: E402
from trainer.parallel import prepare_model  # noqa: E402
from utils import distributed  # noqa: E402


def local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def nbytes(tensors) -> int:
    return sum(local(t).numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def measure(strategy: str, width: int, layers: int) -> dict[str, int]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    prepared = prepare_model(model, TrainerSettings(strategy=strategy), torch.device("cpu"))
    optimizer = torch.optim.AdamW(prepared.module.parameters(), lr=1e-3)
    prepared.train_forward(torch.randn(8, width)).square().mean().backward()
    optimizer.step()
    params = list(prepared.module.parameters())
    state = [value for per_param in optimizer.state.values() for value in per_param.values() if value.dim() > 0]
    return {"parameters": sum(p.numel() for p in params) if strategy == "ddp" else 0, "weights": nbytes(params),
            "gradients": nbytes(p.grad for p in params), "optimizer": nbytes(state)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    distributed.init_distributed(torch.device("cpu"))
    results = {strategy: measure(strategy, args.width, args.layers) for strategy in ("ddp", "fsdp")}
    if distributed.is_main_process():
        total = results["ddp"]["parameters"]
        print(f"{args.layers} x Linear({args.width}, {args.width}): {total:,} parameters, {distributed.world_size()} processes; MiB per process")
        print(f"  {'strategy':<9}{'weights':>10}{'gradients':>11}{'optimizer':>11}{'total':>10}")
        for strategy, row in results.items():
            values = [row["weights"], row["gradients"], row["optimizer"]]
            print(f"  {strategy:<9}" + "".join(f"{v / 2**20:>{w},.1f}" for v, w in zip([*values, sum(values)], (10, 11, 11, 10))))
    distributed.cleanup()


if __name__ == "__main__":
    main()
