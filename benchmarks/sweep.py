"""What a sweep costs per trial, against ``train.py`` alone; and a digits sweep against the default config.

    .venv/bin/python benchmarks/sweep.py                      per-trial overhead: 6 trials, 3 alternating pairs
    .venv/bin/python benchmarks/sweep.py --trials 8 --pairs 5
    .venv/bin/python benchmarks/sweep.py --demo               the 12-trial TPE sweep of configs/digits_space.yaml

**Overhead.** One side is one ``sweep.py`` process training ``--trials`` trials of a small digits
config (random sampler over the learning rate, no pruner, SQLite study); the other is the same
trials as ``train.py -c trial-NNNN/config.json`` processes, one after another (their configs are
the sweep's own trials, so both sides train the same runs). Wall clock, start to exit, pairs in
alternating order; ``paired`` is the median of each pair's ratio (sweep over train.py), which
cancels the machine's drift. A sweep pays for its study (SQLite writes per epoch and per
trial), ``results.csv``, ``best.json`` and the two plots after every trial; it saves the
process start (imports, config checks) of every trial after the first. ``bookkeeping`` is the
time of one ``results.write`` (CSV, best, plots) on the finished study, in this process.

**Demo.** ``configs/digits_space.yaml`` (12 trials, TPE, median pruner after 3 trials and 2
epochs) with ``trainer.epochs=20 trainer.early_stop=0`` (so a full sweep is exactly 240 epochs),
against ``config.json`` trained as it is: the best trial's validation accuracy (at its best
``val_loss`` epoch, as the monitor picks) against the default run's, and the share of the 240
epochs the pruner saved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.startup import timed  # noqa: E402 - whole processes, timed as startup.py times them


def overhead(trials: int, pairs: int, tmp: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    config = json.loads((ROOT / "config.json").read_text())
    config["trainer"].update(epochs=2, limit_batches=10, early_stop=0, progress_bar=False)
    (tmp / "config.json").write_text(json.dumps(config))
    space = {"trials": trials, "sampler": "random", "pruner": "none", "params": {"optimizer.args.lr": {"low": 1e-3, "high": 1e-2, "log": True}}}
    (tmp / "space.yaml").write_text(yaml.safe_dump(space))

    def sweep_once(save_dir: Path) -> float:
        return timed([sys.executable, "sweep.py", "-c", str(tmp / "config.json"), "--space", str(tmp / "space.yaml"), f"trainer.save_dir={save_dir}"], env)

    first = tmp / "first"
    sweep_once(first)  # warms the file cache; its trials' configs are what train.py runs
    folder = first / "digits_cnn" / "sweeps" / "space"
    configs = sorted(folder.glob("trial-*/config.json"))
    assert len(configs) == trials

    def trains_once(save_dir: Path) -> float:
        return sum(timed([sys.executable, "train.py", "-c", str(path), f"trainer.save_dir={save_dir}", "--run-id", path.parent.name], env) for path in configs)

    times: dict[str, list[float]] = {"sweep.py": [], "train.py": []}
    for pair in range(pairs):
        order = ["sweep.py", "train.py"] if pair % 2 == 0 else ["train.py", "sweep.py"]
        for side in order:
            where = tmp / f"{side}-{pair}"
            times[side].append(sweep_once(where) if side == "sweep.py" else trains_once(where))
    ratios = [s / t for s, t in zip(times["sweep.py"], times["train.py"])]

    import optuna

    from app.sweeps import results
    from app.sweeps.space import Param, Space
    from app.sweeps.study import quiet_optuna

    quiet_optuna()
    study = optuna.load_study(study_name="space", storage=f"sqlite:///{folder / 'study.db'}")
    space_obj = Space("space", trials, "random", {}, "none", {}, 0, 60, (Param("optimizer.args.lr", "float", 1e-3, 1e-2, True),))
    started = time.perf_counter()
    results.write(study, folder, space_obj, "val_loss", "minimize")
    bookkeeping = time.perf_counter() - started

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; {trials} trials of the digits config (2 epochs of 10 batches), {pairs} pairs")
    for side, values in times.items():
        print(f"  {side:<9} {statistics.median(values):7.2f} s for {trials} trials = {statistics.median(values) / trials:6.2f} s per trial "
              f"(+/- {(max(values) - min(values)) / 2:.2f} s)")  # fmt: skip
    print(f"  paired    sweep.py / train.py = {statistics.median(ratios):.3f} (pairs: {', '.join(f'{r:.3f}' for r in ratios)})")
    per_trial = (statistics.median(times["sweep.py"]) - statistics.median(times["train.py"])) / trials
    print(f"  per trial the sweep costs {per_trial:+.2f} s against train.py alone; bookkeeping after a trial {bookkeeping:.2f} s")


def demo(tmp: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    epochs = 20
    started = time.perf_counter()
    timed([sys.executable, "sweep.py", "-c", "config.json", "--space", "configs/digits_space.yaml",
           f"trainer.epochs={epochs}", "trainer.early_stop=0", f"trainer.save_dir={tmp}"], env)  # fmt: skip
    sweep_time = time.perf_counter() - started
    started = time.perf_counter()
    timed([sys.executable, "train.py", "-c", "config.json", f"trainer.save_dir={tmp}", "--run-id", "default"], env)
    default_time = time.perf_counter() - started

    def best(run_dir: Path) -> dict:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return min(rows, key=lambda row: row["val_loss"])

    folder = tmp / "digits_cnn" / "sweeps" / "digits_space"
    trials = sorted(folder.glob("trial-*"))
    trained = sum(len((trial / "metrics.jsonl").read_text().splitlines()) for trial in trials)
    chosen = json.loads((folder / "best.json").read_text())
    best_trial, default = best(Path(chosen["run_dir"])), best(tmp / "digits_cnn" / "default")
    states = [row.split(",")[1] for row in (folder / "results.csv").read_text().splitlines()[1:]]
    print(f"{len(trials)} trials ({states.count('complete')} complete, {states.count('pruned')} pruned) in {sweep_time:.0f} s; default run {default_time:.0f} s")
    print(f"  best trial {chosen['number']} {chosen['params']}: val_loss {best_trial['val_loss']:.4f}, val_accuracy {best_trial['val_accuracy']:.4f}")
    print(f"  default config: val_loss {default['val_loss']:.4f}, val_accuracy {default['val_accuracy']:.4f} (epoch {default['epoch']})")
    print(f"  epochs trained {trained} of {len(trials) * epochs}: the pruner saved {1 - trained / (len(trials) * epochs):.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--demo", action="store_true", help="the 12-trial digits sweep against the default config")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.demo:
            demo(Path(folder))
        else:
            overhead(args.trials, args.pairs, Path(folder))


if __name__ == "__main__":
    main()
