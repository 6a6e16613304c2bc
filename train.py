"""Train a model from a config.

    python train.py -c config.json [key.path=value ...]          a new run
    python train.py -r saved/<name>/<run_id>/checkpoints/last.pth   resume that run exactly
    python train.py -r CHECKPOINT -c NEW_CONFIG                    fine-tune: weights only, new run
    torchrun --standalone --nproc_per_node=2 train.py -c config.json   DDP, same code
    python train.py -c CONFIG --print-config [key.path=value ...]   the resolved config, each value's origin
    python train.py -c config.json --auto-resume [--run-id ID]     start the run ID, or continue it (docs/clusters.md)

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
import os
import shlex
import signal
import sys
from dataclasses import replace

from app import auto_resume
from app.cv import cross_validate, is_cv_dir
from app.session import Session, TrainRequest, load_config
from logger.logger import log_to_files
from logger.manifest import command_line
from utils import distributed
from utils.ending import Hooks, finish, leave, starting
from utils.errors import UserError, first_line
from utils.requeue import requeue_job


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
    parser.add_argument(
        "--auto-resume",
        action="store_true",
        help="start the run --run-id names (default: Slurm's or torchrun's job id) or continue it where it stopped (docs/clusters.md)",
    )
    parser.add_argument(
        "--requeue-signal",
        default="SIGUSR1",
        metavar="SIGNAL",
        help="the signal that saves, stops and requeues the Slurm job (default SIGUSR1; 'none': off); docs/clusters.md",
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


def requeue_signal(name: str) -> int | None:
    """``--requeue-signal``'s value as a signal number (None for ``none``)."""
    if name.lower() == "none":
        return None
    try:
        return signal.Signals[name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"].value
    except KeyError:
        raise UserError(f"--requeue-signal: {name!r} is not a signal name; use e.g. SIGUSR1, SIGUSR2 or none") from None


def request_of(args: argparse.Namespace, argv: list[str]) -> TrainRequest:
    return TrainRequest(
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
    distributed.adopt_slurm_environment()  # srun python train.py: Slurm's ranks become torchrun's variables
    starting(STOP)
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    session = Session(request_of(args, argv), STOP)

    def body() -> int:
        STOP.use_requeue_signal(requeue_signal(args.requeue_signal))
        if args.print_config:
            print(load_config(session.request)[0].explain(), end="")
            return 0
        if args.auto_resume:
            if args.folds is not None:
                raise UserError("--auto-resume: not for --folds yet; continue a CV with train.py -r <its CV run directory>")
            decision = auto_resume.decide(session.request, announce=distributed.say_once)
            if decision.request is None:
                return auto_resume.NOTHING_TO_TRAIN
            again = shlex.join(["train.py", *argv])  # under whichever launcher started it: torchrun, srun, sbatch
            session.request = replace(decision.request, resume_hint=f"the same command ({again})")
        if args.folds is not None or (args.resume is not None and args.config is None and is_cv_dir(args.resume)):
            return cross_validate(session.request, args.folds, STOP)  # a run of runs: each fold its own Session
        code = session.run()
        requeue = STOP.requeue_signal and signal.Signals(STOP.requeue_signal).name
        if requeue and session.trainer is not None and session.trainer.stopped_by == requeue:
            distributed.cleanup()  # every rank has saved and stopped: only then may the job be ended
            if os.environ.get("RANK", "0") == "0":
                code = requeue_job() or code
        return code

    return finish(body, STOP, ending_of(session), restore_signals)


def ending_of(session: Session) -> Hooks:
    """A run cut short is taken back (or, once claimed, recorded as stopped or failed in its history);
    an error after the claim also goes to the run's own train.log; a lost peer names the intact
    checkpoint; a start that the requeue signal stopped still requeues the job (nothing was made,
    but the job must come back)."""

    def after_stop(signum: int, code: int) -> int:
        if signum == STOP.requeue_signal and os.environ.get("RANK", "0") == "0":
            return requeue_job() or code
        return code

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
        after_stop=after_stop,
    )


if __name__ == "__main__":
    leave(lambda: main(restore_signals=False))
