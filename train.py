"""Train a model from a config.

    python train.py -c config.json [key.path=value ...]          a new run
    python train.py -r saved/<name>/<run_id>/checkpoints/last.pth   resume that run exactly
    python train.py -r CHECKPOINT -c NEW_CONFIG                    fine-tune: weights only, new run
    torchrun --standalone --nproc_per_node=2 train.py -c config.json   DDP, same code

A run starts as a transaction: the config, the data, the model, the checkpoint's fit and one
pre-flight batch are checked first, and only then is the run directory created (or, resuming,
locked and appended to). Any mistake found on the way is one ``error:`` line with exit code 2
and leaves nothing behind. Everything is built by name from the config; this file wires it.
"""

from __future__ import annotations

from utils.signals import StopRequest

STOP = StopRequest()
if __name__ == "__main__":
    STOP.install()  # before the heavy imports: a signal during start-up is a clean stop, not a traceback

import argparse
import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from app.config import Config, build_loss, build_lr_scheduler, build_metrics, build_optimizer, scheduler_interval
from app.run_dir import RunDirectory, filesystem_error
from logger import get_logger, setup_logging
from logger.logger import log_to_files
from logger.manifest import command_line, extend_manifest, fingerprint, write_manifest
from logger.run_log import RunLog
from trainer import Trainer
from trainer.preflight import run_preflight
from utils import distributed
from utils.checkpoint import Checkpoint, load_checkpoint, load_weights, run_dir_of
from utils.device import limit_visible_gpus, select_device
from utils.errors import UserError, report
from utils.seed import seed_everything


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a model from a config file.")
    parser.add_argument("-c", "--config", help="config file (.json, .yaml, .yml)")
    parser.add_argument("-r", "--resume", help="checkpoint to resume (alone) or to fine-tune from (with -c)")
    parser.add_argument("-d", "--device", dest="devices", help="GPU indices to make visible, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--run-id", help="name of the run directory (default: a timestamp)")
    parser.add_argument("--trust-checkpoint", action="store_true", help="let a checkpoint's config name code outside this project")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.path=value", help="config overrides, e.g. trainer.epochs=3 (+key=value adds a key)"
    )
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    if not STOP.installed:
        STOP.install()
    argv = sys.argv[1:] if argv is None else argv
    session = Session(parse_args(argv), argv)
    try:
        return session.run()
    except KeyboardInterrupt:
        session.abandon(stopped=True)
        print("error: interrupted twice; stopped at once", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as exc:
        session.abandon(stopped=False)
        if isinstance(exc, UserError) and session.claim is not None:  # this run's train.log, never an earlier run's
            log_to_files(logging.ERROR, f"error: {exc}")
        return report(exc, distributed.rank())
    finally:
        STOP.restore()
        distributed.cleanup()


@dataclass
class Session:
    """One ``train.py`` invocation: what it has claimed, so a failure can take back exactly that."""

    args: argparse.Namespace
    argv: list[str] = field(default_factory=list)
    claim: RunDirectory | None = None
    trainer: Trainer | None = None
    training: bool = False

    def run(self) -> int:
        run_dir = self.prepare()
        if run_dir is None:
            return stopped_during_start_up()
        self.training = True
        self.trainer.train()
        return self.outcome(run_dir)

    def prepare(self) -> Path | None:
        """Check and build everything, then claim the run directory; None if a signal came first."""
        args = self.args
        limit_visible_gpus(args.devices)
        config, checkpoint, mode = load_config(args)
        logger = setup_logging(config.settings.verbosity, int(os.environ.get("RANK", 0)))
        for note in config.notes:
            logger.warning(note)
        device = select_device(config["device"], distributed.launched_by_torchrun(), distributed.local_rank())
        distributed.init_distributed(device)
        seed_everything(config["seed"] + distributed.rank())
        if config.settings.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self.trainer = trainer = build_trainer(config, device, checkpoint, mode, args.resume)
        if config.settings.preflight:
            try:
                run_preflight(trainer)  # before the resume: it must see no restored position, and changes nothing
            except UserError as exc:
                raise UserError(f"{config.source}: {exc}") from None
        if mode == "resume":
            trainer.resume(checkpoint)
            check_work_left(trainer, args.resume)
        if distributed.any_process(STOP.requested):
            return None
        run_dir = self.claim_run_dir(config, args, mode)
        try:
            run = open_run_log(run_dir, config, trainer, mode)
        except OSError as exc:  # a read-only run directory: the first write fails, before anything changed
            raise filesystem_error("run directory", run_dir, exc, "make it writable to resume there, or start a new run with -r CKPT -c CONFIG") from None
        run.claim = self.claim  # released when the run log closes, at the end of training
        trainer.attach_run(run)
        record_manifest(run_dir, config, trainer, device, mode, args.resume, command_line("train.py", self.argv))
        log_header(config, run_dir, device, trainer, mode)
        return run_dir

    def claim_run_dir(self, config: Config, args: argparse.Namespace, mode: str) -> Path:
        """Create (new run) or lock (resume) the run directory on rank 0; every rank learns which, or that it failed."""
        outcome: tuple[str, str] = ("", "")
        if distributed.is_main_process():
            try:
                self.claim = RunDirectory.open(run_dir_of(args.resume)) if mode == "resume" else claim_new_run_dir(config, args.run_id)
                outcome = ("ok", str(self.claim.path))
            except UserError as exc:
                outcome = ("error", str(exc))
        kind, text = distributed.broadcast_object(outcome)
        if kind == "error":
            raise UserError(text) if distributed.is_main_process() else UserError(f"rank 0 could not claim the run directory: {text}")
        return Path(text)

    def outcome(self, run_dir: Path) -> int:
        trainer, logger = self.trainer, get_logger()
        last = run_dir / "checkpoints" / f"last{trainer.checkpoint_suffix}"
        if trainer.stopped_by:
            if not trainer.saved_once:
                self.abandon(stopped=True)
                logger.warning("stopped by %s before the first step; nothing was trained and the run directory is removed", trainer.stopped_by)
            else:
                logger.warning("stopped by %s; resume with: %s", trainer.stopped_by, resume_command(last))
            return 128 + getattr(signal, trainer.stopped_by).value
        if trainer.monitor.best_epoch is not None:
            logger.info(
                "done: best %s %.6g at epoch %d; checkpoints in %s (best%s, last%s)",
                trainer.monitor.metric,
                trainer.monitor.best,
                trainer.monitor.best_epoch,
                last.parent,
                trainer.checkpoint_suffix,
                trainer.checkpoint_suffix,
            )
        else:
            logger.info("done: checkpoints in %s", last.parent)
        if self.claim is not None:
            self.claim.release()
        return 0

    def abandon(self, stopped: bool) -> None:
        """After a failure or stop: a new run directory with no checkpoint in it goes (unless a
        failure came after training started: then its train.log tells what happened)."""
        if self.claim is None:
            return
        written = self.trainer is not None and self.trainer.saved_once
        if not written and (stopped or not self.training):
            if self.trainer is not None:
                self.trainer.run.close()
            self.claim.discard()
        self.claim.release()


def stopped_during_start_up() -> int:
    name = STOP.name or "SIGTERM"
    print(f"stopped by {name} during start-up; nothing was created", file=sys.stderr)
    return 128 + getattr(signal, name).value


def load_config(args: argparse.Namespace) -> tuple[Config, Checkpoint | None, str]:
    """(config, checkpoint, mode) where mode is "new", "resume" or "finetune"."""
    check_run_id(args.run_id)
    if args.resume is None and args.config is None:
        raise UserError("give a config with -c CONFIG (a new run) or a checkpoint with -r CHECKPOINT (resume)")
    checkpoint = load_checkpoint(args.resume) if args.resume else None
    if args.config:
        return Config.from_file(args.config, args.overrides), checkpoint, "finetune" if checkpoint else "new"
    checkpoint.require_resumable()
    if run_dir_of(args.resume) == Path(os.path.abspath(args.resume)).parent:
        raise UserError(f"-r {args.resume}: to resume, pass the file inside its run's checkpoints/ folder; to start a new run from it, add -c CONFIG")
    source = f"{args.resume} (its config)"
    return Config.from_dict(checkpoint.config, source, args.overrides, trusted=args.trust_checkpoint), checkpoint, "resume"


def check_work_left(trainer: Trainer, checkpoint: str) -> None:
    """A resume with nothing to train is a mistake to say, not a run to open (and append nothing to)."""
    progress, epochs = trainer.progress, trainer.settings.epochs
    if progress.start_epoch > epochs:
        raise UserError(
            f"trainer.epochs: {checkpoint} has finished epoch {progress.completed_epochs} and trainer.epochs is {epochs}: nothing to train; "
            f"resume with trainer.epochs={progress.completed_epochs + 1} or more"
        )


def check_run_id(run_id: str | None) -> None:
    if run_id is None:
        return
    plain = run_id.strip() == run_id and run_id and not run_id.startswith(".") and run_id.isprintable()
    if not plain or "/" in run_id or "\\" in run_id:
        raise UserError(f"--run-id: {run_id!r} is not a folder name; use letters, digits, '-' or '_'")
    if len(run_id.encode()) > 255:
        raise UserError(f"--run-id: too long for a folder name ({len(run_id.encode())} bytes, at most 255); choose a shorter one")


def claim_new_run_dir(config: Config, run_id: str | None) -> RunDirectory:
    """``<save_dir>/<name>/<run_id>``, created; without ``--run-id`` a time stamp, with ``_2``, ``_3`` ... when
    another run started in the same second."""
    parent = Path(config.settings.save_dir).expanduser() / config["name"]
    if run_id is not None:
        return RunDirectory.create(parent / run_id)
    stamp = time.strftime("%m%d_%H%M%S")
    for attempt in range(1, 100):
        try:
            return RunDirectory.create(parent / (stamp if attempt == 1 else f"{stamp}_{attempt}"))
        except UserError as exc:
            if "--run-id" not in str(exc):
                raise
    raise UserError(f"trainer.save_dir: could not find a free run directory name in {parent}; pass --run-id")


def build_trainer(config: Config, device: torch.device, checkpoint: Checkpoint | None, mode: str, source: str | None = None) -> Trainer:
    """Everything a run needs, built from the config; nothing is written."""
    settings = config.settings
    data_loader = config.init_obj("data_loader")
    if callable(getattr(data_loader, "set_seed", None)):
        data_loader.set_seed(config["seed"])
    valid_data_loader = data_loader.split_validation() if hasattr(data_loader, "split_validation") else None
    monitored = settings.monitor_metric
    if monitored and monitored.startswith("val_") and valid_data_loader is None and not settings.overfit_batches:
        raise config.error(
            "trainer.monitor",
            f"monitors {monitored!r} but the data loader has no validation split; "
            f"set data_loader.args.validation_split or monitor a training metric",
        )
    model = config.init_obj("arch")
    if mode == "finetune":
        for problem in load_weights(model, checkpoint.weights(ema=settings.ema_evaluate), settings.load_strict, source):
            get_logger().warning("fine-tuning from %s: %s", source, problem)
    from trainer.parallel import prepare_model

    prepared = prepare_model(model, settings, device)  # before the optimizer: FSDP replaces the parameters
    optimizer = build_optimizer(config, prepared.module)
    return Trainer(
        prepared,
        build_loss(config),
        optimizer,
        settings,
        device,
        data_loader,
        valid_data_loader,
        metrics=build_metrics(config),
        lr_scheduler=build_lr_scheduler(config, optimizer),
        scheduler_interval=scheduler_interval(config),
        stop=STOP,
        checkpoint_meta={"arch": config["arch"]["type"], "config": config.to_dict()},
    )


def open_run_log(run_dir: Path, config: Config, trainer: Trainer, mode: str) -> RunLog:
    if not distributed.is_main_process():
        return RunLog.off()
    tensorboard = config.settings.tensorboard
    if mode == "resume":
        progress = trainer.progress
        return RunLog.resume(run_dir, config.to_dict(), progress.completed_epochs, progress.global_step, tensorboard)
    return RunLog.start(run_dir, config.to_dict(), tensorboard)


def record_manifest(run_dir: Path, config: Config, trainer: Trainer, device: torch.device, mode: str, checkpoint: str | None, command: str) -> None:
    """``manifest.json``: written for a new run, extended by a resume (``logger/manifest.py``); collective under DDP."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    devices = distributed.gather_objects(name)
    if not distributed.is_main_process():
        return
    if mode == "resume":
        extend_manifest(run_dir, command, str(checkpoint), config.digest(), distributed.world_size(), devices)
    else:
        data = {"train": fingerprint(trainer.data), "valid": fingerprint(trainer.valid_data)}
        write_manifest(run_dir, command, config.digest(), distributed.world_size(), devices, config["seed"], data)


def resume_command(checkpoint: Path) -> str:
    """The command that continues this run, with the same launcher and process count."""
    launcher = "python"
    if distributed.launched_by_torchrun():
        per_node = os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size())
        nodes = int(os.environ.get("GROUP_WORLD_SIZE", 1))
        where = f"--nnodes={nodes} --node_rank=N --rdzv_endpoint=HOST:PORT" if nodes > 1 else "--standalone"
        launcher = f"torchrun {where} --nproc_per_node={per_node}"
    return f"{launcher} train.py -r {shlex.quote(str(checkpoint))}"


def log_header(config: Config, run_dir: Path, device: torch.device, trainer: Trainer, mode: str) -> None:
    """One screen saying what this run is, where it writes, and how to resume it."""
    module = trainer.model.module
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    world = distributed.world_size()
    batch = getattr(trainer.data, "batch_size", None)
    progress = trainer.progress
    lines = [
        f"experiment   {config['name']} ({config.source}, {mode})",
        f"run dir      {run_dir}",
        f"device       {device}, world size {world}, strategy {trainer.model.strategy}"
        + (f", batch {batch} per process = global batch {batch * world}" if batch else ""),
        f"model        {config['arch']['type']}: {trainable:,} trainable of {total:,} parameters",
        f"data         {_size(trainer.data)} training samples, {_size(trainer.valid_data)} validation samples, "
        f"{trainer.batches_per_epoch} batches per epoch",
        f"epochs       {progress.start_epoch}..{config.settings.epochs}, monitor {config.settings.monitor}",
        f"resume with  {resume_command(run_dir / 'checkpoints' / f'last{trainer.checkpoint_suffix}')}"
        + ("" if mode == "resume" else "  (once it is written)"),
    ]
    if progress.batch_in_epoch:
        lines.append(f"resuming     epoch {progress.epoch} at batch {progress.batch_in_epoch:,} of {trainer.batches_per_epoch:,}")
    get_logger().info("\n  " + "\n  ".join(lines))
    get_logger().debug("%s", module)


def _size(loader) -> str:
    if loader is None:
        return "no"
    if isinstance(getattr(loader, "num_samples", None), int):  # streams know their size from their shard index
        return f"{loader.num_samples:,}"
    dataset = getattr(loader, "base_dataset", None) or getattr(loader, "dataset", None) or getattr(getattr(loader, "loader", None), "dataset", None)
    try:
        return f"{len(dataset):,}"
    except TypeError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
