"""What a sweep folder says about its study, rewritten after every trial (each file atomically):

- ``results.csv``: one row per trial slot: ``number`` (the slot: ``trial-NNNN``), ``state``
  (waiting, running, complete, pruned, fail), ``value`` (the objective: the best monitored value,
  the mean over folds with ``--folds``; a pruned trial's last reported one), ``epochs`` (folds
  for a cross-validation), each parameter, ``run_dir`` and ``optuna_trial`` (Optuna's own number;
  a slot retried after its worker vanished has a new one);
- ``best.json``: the best complete trial: number, value, params, run_dir, monitor;
- ``history.png`` and ``importance.png``: Optuna's optimisation history and parameter
  importances (``optuna.visualization.matplotlib``), once there are trials to draw;
- in each finished trial's folder, ``hparams/``: TensorBoard's HPARAMS record of its values and
  objective, so ``tensorboard --logdir <sweep folder>`` compares the trials.

``sweep.py --show SWEEP_DIR`` prints the table, best first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from app.sweeps.space import Space
from app.sweeps.study import slot_of
from logger.logger import get_logger
from utils.errors import first_line
from utils.files import temporary_name, write_atomic


def table_rows(study, space_keys: list[str]) -> list[dict]:
    """One row per slot (its latest Optuna trial), by slot."""
    latest: dict[int, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        slot = slot_of(trial)
        if slot is not None and (slot not in latest or trial.number > latest[slot].number):
            latest[slot] = trial
    rows = []
    for slot in sorted(latest):
        trial = latest[slot]
        value = trial.value
        if value is None and trial.intermediate_values and trial.state.name == "PRUNED":
            value = trial.intermediate_values[max(trial.intermediate_values)]
        row = {"number": slot, "state": trial.state.name.lower(), "value": value, "epochs": trial.user_attrs.get("epochs")}
        for key in space_keys:
            row[key] = trial.params.get(key)
        row["run_dir"] = f"trial-{slot:04d}"
        row["optuna_trial"] = trial.number
        rows.append(row)
    return rows


def best_first(rows: list[dict], direction: str) -> list[dict]:
    """Complete trials by value (best first), then pruned ones by value, then the rest by number."""
    sign = -1 if direction == "maximize" else 1

    def key(row: dict) -> tuple:
        rank = {"complete": 0, "pruned": 1}.get(row["state"], 2)
        value = row["value"]
        usable = isinstance(value, (int, float)) and math.isfinite(value)
        return (rank, 0 if usable else 1, sign * value if usable else 0, row["number"])

    return sorted(rows, key=key)


def render(rows: list[dict], space_keys: list[str], limit: int | None = None) -> str:
    header = ["number", "state", "value", "epochs", *space_keys, "run_dir"]
    shown = rows if limit is None else rows[:limit]
    lines = [header] + [[_text(row.get(column)) for column in header] for row in shown]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)
    if limit is not None and len(rows) > limit:
        text += f"\n  ... {len(rows) - limit} more in results.csv"
    return text


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write(study, folder: Path, space: Space, metric: str, direction: str) -> str:
    """Rewrite ``results.csv``, ``best.json`` and the plots; the console table (best first)."""
    keys = [param.key for param in space.params]
    rows = table_rows(study, keys)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["number", "state", "value", "epochs", *keys, "run_dir", "optuna_trial"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(folder / "results.csv", buffer.getvalue(), "sweep folder", "make it writable")
    ranked = best_first(rows, direction)
    best = next((row for row in ranked if row["state"] == "complete"), None)
    if best is not None:
        data = {
            "number": best["number"],
            "value": best["value"],
            "monitor": f"{'max' if direction == 'maximize' else 'min'} {metric}",
            "params": {key: best[key] for key in keys},
            "run_dir": str((folder / best["run_dir"]).resolve()),
            "optuna_trial": best["optuna_trial"],
        }
        write_atomic(folder / "best.json", json.dumps(data, indent=2) + "\n", "sweep folder", "make it writable")
    write_plots(study, folder)
    return render(ranked, keys, limit=10)


def write_plots(study, folder: Path) -> None:
    """Optuna's history and importance plots as PNG; a plot Optuna cannot draw yet is left out."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    drawings = [("history.png", plots.plot_optimization_history)]
    if len(complete) >= 2:
        drawings.append(("importance.png", plots.plot_param_importances))
    for name, draw in drawings:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = draw(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. no parameter varied yet
                get_logger().debug("sweep: %s not drawn: %s", name, first_line(exc))
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        tmp = temporary_name(folder / name)
        try:
            figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            os.replace(tmp, folder / name)
        except OSError as exc:
            get_logger().warning("sweep: could not write %s: %s", folder / name, first_line(exc))
        finally:
            plt.close(figure)
            tmp.unlink(missing_ok=True)


def write_hparams(trial_dir: Path, values: dict, metric: str, value: float | None, enabled: bool) -> None:
    """TensorBoard's HPARAMS record for one finished trial, in ``<trial>/hparams/``."""
    if not enabled or value is None or not trial_dir.is_dir():
        return
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    clean = {key: ("null" if item is None else item) for key, item in values.items()}
    tag = f"hparam/{metric}"
    experiment, start, end = hparams(clean, {tag: value})
    with SummaryWriter(log_dir=str(trial_dir / "hparams")) as writer:
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)
        writer.add_scalar(tag, value, 0)
