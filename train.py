"""Train a model from a config.

    python train.py -c config.json [key.path=value ...]          a new run
    python train.py -r saved/<name>/<run_id>/checkpoints/last.pth   resume that run exactly
    python train.py -r CHECKPOINT -c NEW_CONFIG                    fine-tune: weights only, new run
    torchrun --standalone --nproc_per_node=2 train.py -c config.json   DDP, same code
    python train.py -c CONFIG --print-config [key.path=value ...]   the resolved config, each value's origin

A run starts as a transaction: the config, the data, the model, the checkpoint's fit and one
pre-flight batch are checked first, and only then is the run directory created (or, resuming,
locked and appended to). Any mistake found on the way is one ``error:`` line with exit code 2
and leaves nothing behind. The run's life is ``app/session.py``; this file is its command line.
"""

from __future__ import annotations

from utils.ending import catch_signals
from utils.signals import StopRequest

STOP = StopRequest()
if __name__ == "__main__":
    catch_signals(STOP)  # before the heavy imports: a signal during them ends the process, nothing made

import argparse
import logging
import sys

from app.cv import cross_validate, is_cv_dir
from app.session import RunRequest, Session, load_config
from logger.logger import log_to_files
from logger.manifest import command_line
from utils.ending import Hooks, finish, leave, starting
from utils.errors import UserError, first_line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a model from a config file.")
    parser.add_argument("-c", "--config", help="config file (.json, .yaml, .yml)")
    parser.add_argument("-r", "--resume", help="checkpoint to resume (alone) or to fine-tune from (with -c)")
    parser.add_argument("-d", "--device", dest="devices", help="GPU indices to make visible, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--run-id", help="name of the run directory (default: a timestamp)")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="let a checkpoint's config name code outside this project (and this run's checkpoints do so)",
    )
    parser.add_argument("--folds", type=int, metavar="K", help="K-fold cross-validation: train every fold as one run (a CV run directory)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config with the file:line or override that set each value, then exit without training",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="config overrides, e.g. trainer.epochs=3, metrics[name=f1].args.average=micro (+key=value adds a key, ~key deletes one)",
    )
    return parser.parse_intermixed_args(argv)


def request_of(args: argparse.Namespace, argv: list[str]) -> RunRequest:
    return RunRequest(
        config=args.config,
        resume=args.resume,
        overrides=list(args.overrides),
        run_id=args.run_id,
        devices=args.devices,
        trust_checkpoint=args.trust_checkpoint,
        command=command_line("train.py", argv),
    )


def main(argv: list[str] | None = None, restore_signals: bool = True) -> int:
    """Train; the exit code. ``restore_signals``: give SIGINT/SIGTERM back to whoever had them (a
    caller in the same process); the script itself keeps them, so a signal while it exits changes nothing."""
    starting(STOP)
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    session = Session(request_of(args, argv), STOP)

    def body() -> int:
        if args.print_config:
            print(load_config(session.request)[0].explain(), end="")
            return 0
        if args.folds is not None or (args.resume is not None and args.config is None and is_cv_dir(args.resume)):
            return cross_validate(session.request, args.folds, STOP)  # a run of runs: each fold its own Session
        return session.run()

    return finish(body, STOP, ending_of(session), restore_signals)


def ending_of(session: Session) -> Hooks:
    """A run cut short is taken back (or, once claimed, recorded as stopped or failed in its history);
    an error after the claim also goes to the run's own train.log; a lost peer names the intact checkpoint."""

    def failed(exc: BaseException, peer_lost: bool) -> None:
        session.abandon(stopped=False, reason=first_line(exc))
        if isinstance(exc, UserError) and session.claim is not None:  # this run's train.log, never an earlier run's
            log_to_files(logging.ERROR, f"error: {exc}")
        if peer_lost and session.trainer is not None and session.trainer.saved_once:
            logging.getLogger("template").warning("the last checkpoint is intact; resume with: %s", session.resume_command())

    return Hooks(
        stopped=lambda signum: session.abandon(stopped=True),
        interrupted=lambda: session.abandon(stopped=True, reason="interrupted twice"),
        failed=failed,
    )


if __name__ == "__main__":
    leave(lambda: main(restore_signals=False))
