"""What the checkpoints' checksums cost on a large model, against the save and load they guard.

    .venv/bin/python benchmarks/checksums.py                 a 100M-parameter model (400 MB of weights)
    .venv/bin/python benchmarks/checksums.py --millions 25 --repeats 5

Times, in one process, the median of ``--repeats`` rounds of: ``torch.save`` of a checkpoint
holding the weights and an Adam state (1.2 GB for 100M parameters) to a temporary file with
fsync, the CRC-32 of every part (``utils/checkpoints/checksum.py``), ``torch.load`` of it, and
the check after loading. The checksums' share is what a run pays per checkpoint.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.checkpoints.files import save_atomic, verify_checksums, with_checksums  # noqa: E402


def state_of(millions: int) -> dict:
    model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(max(1, millions * 1_000_000 // (4096 * 4097)))])
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4096)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "progress": {"epoch": 1, "batch_in_epoch": 0, "global_step": 1}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--millions", type=int, default=100, help="parameters of the model, in millions (default: 100)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    state = state_of(args.millions)
    parameters = sum(t.numel() for t in state["model"].values())
    times: dict[str, list[float]] = {"checksum": [], "save": [], "load": [], "verify": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        path = Path(tmp) / "last.pth"
        for _ in range(args.repeats):
            started = time.perf_counter()
            signed = with_checksums(state)
            times["checksum"].append(time.perf_counter() - started)
            started = time.perf_counter()
            save_atomic(signed, path)
            times["save"].append(time.perf_counter() - started)
            started = time.perf_counter()
            loaded = torch.load(path, weights_only=True, map_location="cpu")
            times["load"].append(time.perf_counter() - started)
            started = time.perf_counter()
            verify_checksums(loaded, path)
            times["verify"].append(time.perf_counter() - started)
        size = path.stat().st_size
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; {parameters / 1e6:.0f}M parameters, a {size / 2**30:.2f} GiB checkpoint; median of {args.repeats}")
    print(f"  save (torch.save + fsync + rename)  {median['save']:.2f} s")
    print(f"  checksums before saving             {median['checksum']:.2f} s  ({median['checksum'] / median['save']:.0%} of the save, {size / median['checksum'] / 2**30:.2f} GiB/s)")
    print(f"  load (torch.load, weights_only)     {median['load']:.2f} s")
    print(f"  checksums checked after loading     {median['verify']:.2f} s  ({median['verify'] / median['load']:.0%} of the load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
