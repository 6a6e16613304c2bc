"""Training throughput of the sharded stream against the map-style loader, on the digits.

    python benchmarks/stream_throughput.py                          2 workers, 5 pairs of 3-epoch runs
    python benchmarks/stream_throughput.py --num-workers 0 2 --pairs 7

Both sides train the same model (configs/digits_stream.json's, from the same seed) on the same
1,222 training samples with the same batch size and ``num_workers``: the stream reads the
``.npz`` shards (``DigitsStreamLoader``), the map-style side indexes a Dataset one sample at a
time (``DigitsDataLoader``, ``in_memory=false``). The value per run is the Trainer's own
``samples_per_sec`` (data waits and worker start-up included, validation and checkpoints not),
the median over its epochs. Runs alternate stream/map, map/stream... in one process, and the
ratio is taken within each pair, so a machine whose load drifts still gives a fair ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from app.config import Config, read_config  # noqa: E402
from logger import setup_logging  # noqa: E402
from utils.seed import seed_everything  # noqa: E402


def configs(data_dir: str, num_workers: int, epochs: int, save_dir: str) -> dict[str, Config]:
    stream = read_config(ROOT / "configs" / "digits_stream.json")  # through digits.yaml, which it extends
    stream["data_loader"]["args"].update(data_dir=data_dir, num_workers=num_workers)
    mapped = copy.deepcopy(stream)
    mapped["data_loader"] = {
        "type": "DigitsDataLoader",
        "args": {"batch_size": stream["data_loader"]["args"]["batch_size"], "num_workers": num_workers, "in_memory": False},
    }
    overrides = [
        f"trainer.epochs={epochs}",
        "trainer.monitor=off",
        "trainer.tensorboard=false",
        f"trainer.save_dir={save_dir}",
        "trainer.preflight=false",
    ]
    return {name: Config.from_dict(data, f"benchmark ({name})", overrides) for name, data in (("stream", stream), ("map", mapped))}


def samples_per_sec(config: Config) -> float:
    """The median of the Trainer's per-epoch ``samples_per_sec`` over a run without validation."""
    from app.session import build_trainer

    seed_everything(config["seed"])
    trainer = build_trainer(config, torch.device("cpu"))
    trainer.valid_data = None  # training throughput only
    rows: list[dict] = []
    trainer.recorder.log_epoch = lambda row, step: rows.append(row)
    trainer.train()
    return statistics.median(row["samples_per_sec"] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-workers", type=int, nargs="+", default=[2])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup_logging(0)
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.num_workers:
            runs = configs(str(Path(tmp) / "shards"), workers, args.epochs, tmp)
            samples_per_sec(runs["stream"])  # warm-up: writes the shards and their index, imports everything
            results: dict[str, list[float]] = {"stream": [], "map": []}
            for pair in range(args.pairs):
                for name in ("stream", "map") if pair % 2 == 0 else ("map", "stream"):
                    results[name].append(samples_per_sec(runs[name]))
            ratios = [s / m for s, m in zip(results["stream"], results["map"])]
            print(
                f"num_workers={workers}: stream {statistics.median(results['stream']):,.0f} samples/s, "
                f"map-style {statistics.median(results['map']):,.0f} samples/s, "
                f"paired ratio stream/map median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}, {len(ratios)} pairs)"
            )


if __name__ == "__main__":
    main()
