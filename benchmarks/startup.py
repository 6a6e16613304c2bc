"""Whole processes, side by side: ``train.py`` against a bare script doing the same work.

    .venv/bin/python benchmarks/startup.py                     every workload, 5 alternating pairs
    .venv/bin/python benchmarks/startup.py --workloads startup --pairs 11

Each workload is run as two processes, alternately first: ``train.py -c <config>`` and a bare
hand-written script (import torch, build the same model, data and optimizer, train the same
steps in the same order with the same batch size, sum the loss and count correct predictions on
the device, save the weights after every epoch). The times are wall clock, start to exit, so they
include the imports, ``train.py``'s checks and pre-flight, its manifest, logs, TensorBoard and
checkpoints. ``paired`` is the median of each pair's ratio (``train.py`` over bare), which
cancels the machine's drift; run it with nothing else busy (see benchmarks/README.md).

Workloads (data from ``SyntheticDataLoader``, a plain function metric, TensorBoard on):

- ``startup``: one optimizer step; the difference is what a run costs to start and end;
- ``mlp``: a tiny MLP (64-64-10), batch 64, 3 epochs of 2,000 steps through a DataLoader;
- ``memory``: the same on the in-memory path (the bare script indexes tensors by a permutation);
- ``lenet``: LeNet on 1x28x28, batch 128, in memory, 2 epochs of 150 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Workload:
    arch: dict
    shape: list[int]
    batch_size: int
    epochs: int
    steps: int  # per epoch
    in_memory: bool


WORKLOADS = {
    "startup": Workload({"type": "MLP", "args": {"in_features": 64, "hidden": 64, "num_classes": 10}}, [64], 64, 1, 1, True),
    "mlp": Workload({"type": "MLP", "args": {"in_features": 64, "hidden": 64, "num_classes": 10}}, [64], 64, 3, 2000, False),
    "memory": Workload({"type": "MLP", "args": {"in_features": 64, "hidden": 64, "num_classes": 10}}, [64], 64, 3, 2000, True),
    "lenet": Workload({"type": "LeNet", "args": {"num_classes": 10}}, [1, 28, 28], 128, 2, 150, True),
}

BARE = """
import sys
import torch, torch.nn.functional as F
sys.path.insert(0, {root!r})
from model.model import {model}

generator = torch.Generator().manual_seed(1234)  # SyntheticDataLoader's data, made the same way
inputs = torch.randn(8192, *{shape!r}, generator=generator)
labels = (inputs.flatten(1) @ torch.randn(inputs[0].numel(), 10, generator=generator)).argmax(dim=1)
torch.manual_seed(0)
model = {model}(**{args!r})
optimizer = torch.optim.Adam(model.parameters(), lr=0.002, weight_decay=0.0001)
generator = torch.Generator()
for epoch in range({epochs}):
    total, correct, step = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64), 0
    while step < {steps}:
        generator.manual_seed(epoch * 1_000_003 + step)
        order = torch.randperm(len(labels), generator=generator)
        if {in_memory}:
            batches = ((inputs[i], labels[i]) for i in order.split({batch}))
        else:
            batches = iter(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, labels), batch_size={batch}, sampler=order.tolist()))
        for x, y in batches:
            output = model(x)
            loss = F.nll_loss(output, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach() * len(y)
            correct += (output.argmax(1) == y).sum()
            step += 1
            if step == {steps}:
                break
    print(epoch, total.item(), correct.item())
    torch.save(model.state_dict(), {checkpoint!r})
"""


def config_for(work: Workload, save_dir: Path) -> dict:
    trainer = {"epochs": work.epochs, "save_dir": str(save_dir), "monitor": "min loss", "progress_bar": False, "log_step": 500}
    trainer["len_epoch" if work.epochs * work.steps > 1 else "limit_batches"] = work.steps
    return {
        "name": "bench",
        "arch": work.arch,
        "data_loader": {
            "type": "benchmarks.overhead:SyntheticDataLoader",
            "args": {"shape": work.shape, "batch_size": work.batch_size, "in_memory": work.in_memory},
        },
        "loss": "nll_loss",
        "metrics": ["accuracy"],
        "optimizer": {"type": "Adam", "args": {"lr": 0.002, "weight_decay": 0.0001}},
        "trainer": trainer,
    }


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{result.stderr[-2000:]}")
    return elapsed


def measure(name: str, work: Workload, pairs: int, tmp: Path) -> dict:
    config = tmp / f"{name}.json"
    config.write_text(json.dumps(config_for(work, tmp / "saved")))
    bare = tmp / f"{name}_bare.py"
    model = work.arch["type"]
    bare.write_text(BARE.format(root=str(ROOT), model=model, shape=work.shape, batch=work.batch_size, in_memory=work.in_memory,
                                args=work.arch["args"], epochs=work.epochs, steps=work.steps, checkpoint=str(tmp / f"{name}.pt")))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sides = {
        "bare": [sys.executable, str(bare)],
        "train.py": [sys.executable, "train.py", "-c", str(config), "--trust-checkpoint"],  # the data loader lives in benchmarks/
    }
    times: dict[str, list[float]] = {"bare": [], "train.py": []}
    for pair in range(pairs + 1):  # the first pair warms the file cache and is not counted
        order = ["bare", "train.py"] if pair % 2 else ["train.py", "bare"]
        got = {side: timed(sides[side], env) for side in order}
        if pair:
            for side, seconds in got.items():
                times[side].append(seconds)
    ratios = [t / b for t, b in zip(times["train.py"], times["bare"])]
    return {
        "bare": statistics.median(times["bare"]),
        "train.py": statistics.median(times["train.py"]),
        "paired": statistics.median(ratios),
        "range": (min(ratios), max(ratios)),
        "difference": statistics.median(t - b for t, b in zip(times["train.py"], times["bare"])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from: {', '.join(WORKLOADS)}")
    parser.add_argument("--pairs", type=int, default=5, help="timed pairs per workload, after one untimed pair (default: 5)")
    args = parser.parse_args(argv)
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; median of {args.pairs} alternating pairs, whole processes")
    print(f"{'workload':10} {'bare s':>8} {'train.py s':>11} {'difference':>11} {'paired':>8}  range")
    for name in args.workloads.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            found = measure(name, WORKLOADS[name], args.pairs, Path(tmp))
        low, high = found["range"]
        print(f"{name:10} {found['bare']:8.2f} {found['train.py']:11.2f} {found['difference']:+10.2f}s {found['paired']:7.3f}x  {low:.3f}-{high:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
