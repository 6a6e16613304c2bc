"""The loop's stall per checkpoint: a synchronous save against ``trainer.async_save``, beside the floor.

    .venv/bin/python benchmarks/async_save.py                    a 100M-parameter model, weights and Adam state (1.2 GB)
    .venv/bin/python benchmarks/async_save.py --millions 25 --saves 5 --gap 2

In one process, through the file store the Trainer uses (``utils/checkpoints/files.py``), it
times the ``save`` call the loop makes (``store.save``: what the loop waits for) for ``--saves``
checkpoints ``--gap`` seconds of simulated training apart, synchronous then asynchronous, and a
plain clone of the same tensors to CPU memory (the physical floor of any save that must not see
the next step's changes). Medians of the saves after the first; the asynchronous side also
reports the final wait (what a stop or the run's end pays). The ratio async / floor is the goal
(within 1.5x).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.checkpoints.background import copied  # noqa: E402
from utils.checkpoints.files import FileStore  # noqa: E402


class Part:
    """A stateful part as the store sees it."""

    def __init__(self, state_dict):
        self.state_dict = state_dict


def parts_of(millions: int) -> dict:
    layers = max(1, round(millions * 1_000_000 / (4096 * 4097)))
    model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(layers)])
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4096)).sum().backward()
    optimizer.step()  # the moments exist: a real checkpoint's optimizer state
    return {"model": Part(model.state_dict), "optimizer": Part(optimizer.state_dict)}


def stalls(store: FileStore, parts: dict, saves: int, gap: float) -> tuple[list[float], float]:
    times = []
    for _ in range(saves):
        start = time.perf_counter()
        store.save("last", {}, parts, {}, mid_epoch=True)
        times.append(time.perf_counter() - start)
        time.sleep(gap)  # training goes on meanwhile
    start = time.perf_counter()
    store.wait()
    return times, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--millions", type=int, default=100, help="parameters, in millions")
    parser.add_argument("--saves", type=int, default=4)
    parser.add_argument("--gap", type=float, default=4.0, help="seconds of 'training' between saves")
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = parts_of(args.millions)
    count = sum(t.numel() for t in parts["model"].state_dict().values())
    size = sum(t.numel() * t.element_size() for p in parts.values() for t in _tensors(p.state_dict()))
    floor = []
    for _ in range(args.saves):
        start = time.perf_counter()
        copy = copied({name: part.state_dict() for name, part in parts.items()})
        floor.append(time.perf_counter() - start)
        del copy
    results = {}
    with tempfile.TemporaryDirectory(dir=".") as folder:
        for name, asynchronous in (("sync", False), ("async", True)):
            store = FileStore()
            store.attach(Path(folder))
            store.asynchronous = asynchronous
            results[name] = stalls(store, parts, args.saves, args.gap if asynchronous else 0.0)
    median = lambda values: statistics.median(values[1:] if len(values) > 1 else values)  # noqa: E731
    print(f"{count / 1e6:.1f}M parameters, {size / 2**30:.2f} GiB of checkpoint tensors, {args.saves} saves, gap {args.gap:.1f} s")
    print(f"{'':28} {'median s':>9} {'x floor':>8}")
    print(f"{'copy to CPU (floor)':28} {median(floor):9.3f} {1.0:8.2f}")
    for name, (times, wait) in results.items():
        print(
            f"{'save, ' + name:28} {median(times):9.3f} {median(times) / median(floor):8.2f}"
            + (f"   final wait {wait:.3f} s" if name == "async" else "")
        )


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


if __name__ == "__main__":
    main()
