"""Compare runs: one row per run directory, with the config keys that differ between them.

    python runs.py                          every run under saved/
    python runs.py saved/mnist_lenet        the runs of one experiment (folds and trials included)
    python runs.py RUN_DIR RUN_DIR ...      just these
    python runs.py saved/ --csv runs.csv    the same table as a file (--csv - prints CSV)

Columns: ``run`` (the run directory, relative to the folder given), ``name``, ``run_id``,
``state`` (running, finished, stopped, failed: see ``app/run_records.py``), ``epochs`` (done /
planned), ``monitor`` and ``best`` (the monitored value's best and its epoch), then every config
key whose value is not the same in all listed runs. It only reads what runs write
(``config.json``, ``metrics.jsonl``, ``manifest.json``) and never changes a run; a run directory it
cannot read is named on stderr and left out.
"""

from __future__ import annotations

from utils.ending import catch_signals

if __name__ == "__main__":
    catch_signals(None)

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from app.run_records import RunView, differing_keys, find_run_dirs, read_run
from utils.ending import finish, leave
from utils.errors import UserError
from utils.files import OutputLock, file_error, temporary_name
from utils.nested import flatten

FIXED = ("run", "name", "run_id", "state", "epochs", "monitor", "best", "best_epoch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A table of runs and the config keys that differ between them.")
    parser.add_argument(
        "paths", nargs="*", default=["saved"], metavar="SAVE_DIR_OR_RUN_DIR", help="folders of runs, or run directories (default: saved)"
    )
    parser.add_argument("--csv", metavar="FILE", help="write the table as CSV to FILE ('-' for standard output)")
    parser.add_argument("--force", action="store_true", help="replace an existing --csv file")
    return parser.parse_args(argv)


def collect(paths: list[str]) -> tuple[list[tuple[str, RunView]], list[str]]:
    """(label, record) for every run found, and one line per run directory that could not be read."""
    runs: list[tuple[str, RunView]] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for given in paths:
        folder = Path(given)
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "no such folder"
            raise UserError(f"{given}: {what}; pass a save_dir (e.g. saved) or a run directory")
        for path in find_run_dirs(folder):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                record = read_run(path)
            except UserError as exc:
                problems.append(f"skipped {path}: {exc}")
                continue
            label = str(path.relative_to(folder)) if path != folder else str(path)
            runs.append((label if len(paths) == 1 else str(path), record))
    return runs, problems


def rows_of(runs: list[tuple[str, RunView]]) -> tuple[list[str], list[list[str]]]:
    """The header and one row of text per run."""
    keys = differing_keys([record.config for _, record in runs]) if len(runs) > 1 else []
    header = [*FIXED, *keys]
    rows = []
    for label, record in runs:
        metric, best, epoch = record.best()
        flat = flatten(record.config)
        epochs = f"{record.rows[-1]['epoch'] if record.rows else 0}/{record.epochs_planned}"
        rows.append(
            [
                label,
                record.name,
                record.path.name,
                record.state,
                epochs,
                metric or "-",
                _text(best),
                _text(epoch),
                *(_text(flat.get(key)) for key in keys),
            ]
        )
    return header, rows


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows])


def as_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: Path, text: str, force: bool) -> None:
    with OutputLock(path, "--csv", force) as output:
        tmp = temporary_name(path)
        try:
            tmp.write_text(text, encoding="utf-8")
            output.publish(tmp)
        except OSError as exc:
            raise file_error("--csv", path, exc, "pass --csv with a writable place") from None
        finally:
            tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse_args(argv)
        runs, problems = collect(args.paths)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not runs:
            raise UserError(f"no run directories under {', '.join(args.paths)}; train one with: python train.py -c config.json")
        header, rows = rows_of(runs)
        if args.csv == "-":
            sys.stdout.write(as_csv(header, rows))
        elif args.csv:
            write_csv(Path(args.csv), as_csv(header, rows), args.force)
            print(f"wrote {args.csv} ({len(rows)} runs)")
        else:
            print(render(header, rows))
        return 0

    return finish(body)


if __name__ == "__main__":
    leave(main)
