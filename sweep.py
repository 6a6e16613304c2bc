"""Hyperparameter sweeps with Optuna: every trial an ordinary run directory.

    python sweep.py -c config.json --space configs/digits_space.yaml          a sweep (or continue it)
    python sweep.py -c config.json --space SPACE --trials 20                  more trials in the same study
    python sweep.py -c config.json --space SPACE --folds 5                    each trial a 5-fold cross-validation
    python sweep.py -c config.json --space SPACE --storage postgresql://...   many machines, one study
    torchrun --standalone --nproc_per_node=2 sweep.py -c config.json --space SPACE     DDP trials
    python sweep.py --show saved/digits_cnn/sweeps/digits_space               the table, best first

The sweep folder is ``<save_dir>/<name>/sweeps/<study>/`` (``--study`` defaults to the space
file's name): the SQLite study ``study.db`` unless ``--storage`` names another database,
``trial-0000/`` ... (run directories ``test.py`` and ``predict.py`` take as they are),
``results.csv``, ``best.json``, ``history.png``, ``importance.png`` and ``sweep.json`` (how it was
started). Running the same command again continues the study toward its total; a trial a signal
or a kill interrupted is resumed from its own ``last`` checkpoint, exactly. Several workers may run
the same command at once. See ``app/sweeps/`` for the rules.
"""

from __future__ import annotations

from utils.ending import catch_signals
from utils.signals import StopRequest

STOP = StopRequest()
if __name__ == "__main__":
    catch_signals(STOP)  # before the heavy imports: a signal during them ends the process, nothing made

import argparse
import logging
import shlex
import signal
import sys
from pathlib import Path

from app.config import Config
from app.session import launcher
from app.sweeps.worker import Sweep, SweepRequest
from logger.manifest import command_line
from utils.ending import Hooks, finish, leave, starting
from utils.errors import UserError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Hyperparameter sweeps with Optuna; each trial an ordinary run directory.")
    parser.add_argument("-c", "--config", help="the base config (JSON or YAML)")
    parser.add_argument("--space", help="the search space (JSON or YAML): trials, sampler, pruner, params")
    parser.add_argument("--study", help="the study's name (default: the space file's name); names the sweep folder")
    parser.add_argument("--storage", help="an Optuna RDB URL shared by workers, e.g. postgresql://user@host/db (default: SQLite in the sweep folder)")
    parser.add_argument("--trials", type=int, metavar="N", help="the study's total number of trials (overrides the space's trials)")
    parser.add_argument("--folds", type=int, metavar="K", help="each trial a K-fold cross-validation; its objective the mean over folds")
    parser.add_argument("-d", "--device", dest="devices", help="GPU indices to make visible, e.g. 0,1")
    parser.add_argument("--trust-checkpoint", action="store_true", help="the trials' checkpoints may name code outside this project")
    parser.add_argument("--show", metavar="SWEEP_DIR", help="print a sweep's trials, best first, and exit")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved base config with the file:line or override that set each value, then exit"
    )
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides for every trial, e.g. trainer.epochs=5")
    return parser.parse_intermixed_args(argv)


def show(folder: Path, storage: str | None) -> int:
    import optuna

    from app.sweeps import results
    from app.sweeps.storage import open_storage
    from app.sweeps.study import quiet_optuna
    from app.sweeps.worker import read_description

    quiet_optuna()
    description = read_description(folder)
    url = storage or description.get("storage")
    if not url or "***" in url:
        raise UserError(f"--show: {folder}'s study is in a database with a password; pass --storage URL")
    study = optuna.load_study(study_name=description["study"], storage=open_storage(url, 0))
    sweep = study.user_attrs.get("sweep", {})
    keys = list(sweep.get("space", {}).get("params", {}))
    monitor = description.get("monitor", "min ?")
    direction = "maximize" if str(monitor).startswith("max") else "minimize"
    rows = results.best_first(results.table_rows(study, keys), direction)
    print(f"sweep {description['study']} ({monitor}), {len(rows)} trials; folder {folder}")
    print(results.render(rows, keys))
    return 0


def main(argv: list[str] | None = None, restore_signals: bool = True) -> int:
    starting(STOP)
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        args = parse_args(argv)
        if args.show:
            return show(Path(args.show), args.storage)
        if args.print_config and args.config:
            print(Config.from_file(args.config, args.overrides).explain(), end="")
            return 0
        if not args.config or not args.space:
            raise UserError("sweep.py: pass -c CONFIG and --space SPACE (or --show SWEEP_DIR)")
        request = SweepRequest(
            config=args.config,
            space=args.space,
            study=args.study,
            storage=args.storage,
            trials=args.trials,
            folds=args.folds,
            overrides=list(args.overrides),
            trust_checkpoint=args.trust_checkpoint,
            devices=args.devices,
            command=command_line("sweep.py", argv),
            hint=f"{launcher()} {shlex.join(['sweep.py', *argv])}",
        )
        sweep = Sweep(request, STOP)
        sweep.prepare()
        return sweep.run()

    def stopped(signum: int) -> str:  # at start-up, or between trials (each trial's own run is already taken back)
        return f"stopped by {signal.Signals(signum).name}; the study keeps every finished trial and continues with the same command"

    def failed(exc: BaseException, peer_lost: bool) -> None:
        logging.getLogger("template").debug("sweep failed", exc_info=exc)

    return finish(body, STOP, Hooks(stopped=stopped, failed=failed), restore_signals)


if __name__ == "__main__":
    leave(lambda: main(restore_signals=False))
