"""What an experiment tracker costs a run: epochs with MLflow and W&B against epochs without.

    python benchmarks/trackers.py                          the digits experiment, 6 epochs of 20 batches, 5 rounds
    python benchmarks/trackers.py --epochs 10 --batches 50 --rounds 7

Each round trains the same tiny experiment (``config.json``: the digits CNN on CPU) in this
process once per tracker set (none, mlflow, wandb, both), in a rotating order, after an untimed
warm-up round that imports the libraries. A run writes into a temporary folder; MLflow uses its
default SQLite store there (one store per tracker set, so the later rounds find its tables made),
W&B is offline. Per run: the first epoch (the trackers open their runs in the background then),
the median of the later epochs (steady state: an epoch row and ``trainer.log_step`` step scalars
queued per epoch, sent by the trackers' threads), and the end (``Session.outcome``: the trackers
send what is left and finish). The numbers to read are the medians over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import train  # noqa: E402
from logger.logger import close_log_files  # noqa: E402

SETS = {"none": ["tensorboard"], "mlflow": ["tensorboard", "mlflow"], "wandb": ["tensorboard", "wandb"], "both": ["tensorboard", "mlflow", "wandb"]}


def run_once(folder: Path, trackers: list[str], epochs: int, batches: int, run_id: str) -> dict:
    """One in-process run; its epoch durations (s) and the time its end took."""
    config = json.loads((ROOT / "config.json").read_text())
    config["trainer"].update(epochs=epochs, limit_batches=batches, save_dir=str(folder / "saved"), early_stop=0, progress_bar=False, log_step=5)
    config["logger"] = {"trackers": trackers}
    path = folder / f"{run_id}.json"
    path.write_text(json.dumps(config))
    argv = ["-c", str(path), "--run-id", run_id]
    marks: list[float] = []
    with contextlib.redirect_stdout(io.StringIO()):
        session = train.Session(train.request_of(train.parse_args(argv), argv), train.STOP.install())
        session.prepare()
        session.training = True
        session.trainer.epoch_end.append(lambda row: marks.append(time.perf_counter()))
        started = time.perf_counter()
        session.trainer.train()
        ending = time.perf_counter()
        assert session.outcome() == 0
        ended = time.perf_counter()
    train.STOP.restore()
    close_log_files()
    durations = [b - a for a, b in zip([started, *marks], marks)]
    return {"first": durations[0], "later": statistics.median(durations[1:]), "end": ended - ending}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("WANDB_MODE", "offline")
    results: dict[str, list[dict]] = {name: [] for name in SETS}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("WANDB_CACHE_DIR", str(Path(tmp) / "wandb-cache"))
        names = list(SETS)
        for round_ in range(args.rounds + 1):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                folder = Path(tmp) / name
                folder.mkdir(exist_ok=True)
                timing = run_once(folder, SETS[name], args.epochs, args.batches, f"r{round_}")
                if round_:  # round 0 warms up: imports, MLflow's tables
                    results[name].append(timing)
    base = statistics.median(r["later"] for r in results["none"])
    print(f"{args.epochs} epochs of {args.batches} batches, {args.rounds} rounds (medians, seconds)")
    print(f"{'trackers':>8} {'first epoch':>12} {'later epochs':>13} {'vs none':>8} {'end':>7}")
    for name, runs in results.items():
        later = statistics.median(r["later"] for r in runs)
        first = statistics.median(r["first"] for r in runs)
        end = statistics.median(r["end"] for r in runs)
        print(f"{name:>8} {first:12.3f} {later:13.3f} {later / base:8.3f} {end:7.3f}")


if __name__ == "__main__":
    main()
