"""Train a model from a config.

    python train.py -c config.json [key.path=value ...]          a new run
    python train.py -r saved/<name>/<run_id>/checkpoints/last.pth   resume that run exactly
    python train.py -r CHECKPOINT -c NEW_CONFIG                    fine-tune: weights only, new run
    torchrun --standalone --nproc_per_node=2 train.py -c config.json   DDP, same code

Everything is built by name from the config; this file only wires the pieces together.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import torch

from logger import get_logger, setup_logging
from logger.run_log import RunLog
from trainer import Trainer
from utils import distributed
from utils.builders import build_loss, build_lr_scheduler, build_metrics, build_optimizer, load_weights
from utils.checkpoint import load_checkpoint, run_dir_of
from utils.config import Config
from utils.device import limit_visible_gpus, select_device
from utils.errors import EXIT_USER_ERROR, UserError
from utils.seed import seed_everything


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a model from a config file.")
    parser.add_argument("-c", "--config", help="config file (.json, .yaml, .yml)")
    parser.add_argument("-r", "--resume", help="checkpoint to resume (alone) or to fine-tune from (with -c)")
    parser.add_argument("-d", "--device", dest="devices", help="GPU indices to make visible, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--run-id", help="name of the run directory (default: a timestamp)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.path=value", help="config overrides, e.g. trainer.epochs=3 (+key=value adds a key)"
    )
    return parser.parse_intermixed_args(argv)


def load_config(args: argparse.Namespace) -> tuple[Config, dict | None, str]:
    """(config, checkpoint, mode) where mode is "new", "resume" or "finetune"."""
    if args.resume is None and args.config is None:
        raise UserError("give a config with -c CONFIG (a new run) or a checkpoint with -r CHECKPOINT (resume)")
    checkpoint = load_checkpoint(args.resume) if args.resume else None
    if args.config:
        return Config.from_file(args.config, args.overrides), checkpoint, "finetune" if checkpoint else "new"
    return Config.from_dict(checkpoint["config"], f"{args.resume} (its config)", args.overrides), checkpoint, "resume"


def choose_run_dir(config: Config, args: argparse.Namespace, mode: str) -> Path:
    if mode == "resume":
        return run_dir_of(args.resume)
    run_id = args.run_id or time.strftime("%m%d_%H%M%S")
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise UserError(f"--run-id: {run_id!r} is not a folder name; use letters, digits, '-' or '_'")
    run_dir = Path(config.trainer["save_dir"]) / config["name"] / run_id
    if run_dir.exists() and distributed.is_main_process():
        raise UserError(f"--run-id: {run_dir} already exists; choose another --run-id, or resume it with -r {run_dir}/checkpoints/last.pth")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        distributed.cleanup()


def train(args: argparse.Namespace) -> int:
    trainer, run_dir = build_trainer(args)
    logger = get_logger()
    trainer.train()

    last = run_dir / "checkpoints" / "last.pth"
    if trainer.stopped_by:
        logger.warning("stopped by %s; resume with: %s", trainer.stopped_by, resume_command(last))
        return 128 + getattr(signal, trainer.stopped_by).value
    if trainer.best_epoch is not None:
        logger.info(
            "done: best %s %.6g at epoch %d; checkpoints in %s (best.pth, last.pth)",
            trainer.monitor_metric,
            trainer.monitor_best,
            trainer.best_epoch,
            last.parent,
        )
    else:
        logger.info("done: checkpoints in %s", last.parent)
    return 0


def resume_command(checkpoint: Path) -> str:
    """The command that continues this run, with the same launcher and process count."""
    launcher = "python"
    if distributed.launched_by_torchrun():
        per_node = os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size())
        nodes = int(os.environ.get("GROUP_WORLD_SIZE", 1))
        where = f"--nnodes={nodes} --node_rank=N --rdzv_endpoint=HOST:PORT" if nodes > 1 else "--standalone"
        launcher = f"torchrun {where} --nproc_per_node={per_node}"
    return f"{launcher} train.py -r {shlex.quote(str(checkpoint))}"


def build_trainer(args: argparse.Namespace) -> tuple[Trainer, Path]:
    """Everything a run needs, built from the config; the run directory is created last."""
    limit_visible_gpus(args.devices)
    config, checkpoint, mode = load_config(args)
    cfg = config.trainer
    rank = int(os.environ.get("RANK", 0))
    logger = setup_logging(cfg["verbosity"], rank)

    device = select_device(config["device"], distributed.launched_by_torchrun(), distributed.local_rank())
    distributed.init_distributed(device)
    seed_everything(config["seed"] + distributed.rank())
    if cfg["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    data_loader = config.init_obj("data_loader")
    valid_data_loader = data_loader.split_validation() if hasattr(data_loader, "split_validation") else None
    _, monitored = config.monitor()
    if monitored and monitored.startswith("val_") and valid_data_loader is None and not cfg["overfit_batches"]:
        raise config.error(
            "trainer.monitor",
            f"monitors {monitored!r} but the data loader has no validation split; "
            f"set data_loader.args.validation_split or monitor a training metric",
        )

    model = config.init_obj("arch")
    if checkpoint is not None:
        strict = mode == "resume" or cfg["load_strict"]
        for problem in load_weights(model, checkpoint["model"], strict, args.resume):
            logger.warning("fine-tuning from %s: %s", args.resume, problem)
    model.to(device)
    criterion = build_loss(config)
    metrics = build_metrics(config)
    optimizer = build_optimizer(config, model)
    lr_scheduler = build_lr_scheduler(config, optimizer)

    run_dir = choose_run_dir(config, args, mode)
    resume_state = checkpoint if mode == "resume" else None
    run = RunLog(
        run_dir if distributed.is_main_process() else None,
        config.to_dict(),
        resume_epoch=(resume_state["epoch"] - (1 if resume_state["batch_in_epoch"] else 0)) if resume_state else None,
        resume_step=resume_state["global_step"] if resume_state else None,
    )
    try:
        trainer = Trainer(
            model, criterion, metrics, optimizer, config, device, data_loader, valid_data_loader, lr_scheduler, run=run, checkpoint=resume_state
        )
    except UserError:
        run.discard()  # a new run that could not start leaves nothing behind
        raise
    log_header(config, run_dir, device, model, data_loader, valid_data_loader, trainer, mode)
    return trainer, run_dir


def log_header(config, run_dir, device, model, data_loader, valid_data_loader, trainer, mode) -> None:
    """One screen saying what this run is, where it writes, and how to resume it."""
    logger = get_logger()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    world = distributed.world_size()
    batch = getattr(data_loader, "batch_size", None)
    lines = [
        f"experiment   {config['name']} ({config.source}, {mode})",
        f"run dir      {run_dir}",
        f"device       {device}, world size {world}" + (f", batch {batch} per process = global batch {batch * world}" if batch else ""),
        f"model        {config['arch']['type']}: {trainable:,} trainable of {total:,} parameters",
        f"data         {_size(data_loader)} training samples, {_size(valid_data_loader)} validation samples, "
        f"{trainer.batches_per_epoch} batches per epoch",
        f"epochs       {trainer.start_epoch}..{trainer.epochs}, monitor {config.trainer['monitor']}",
        f"resume with  {resume_command(run_dir / 'checkpoints' / 'last.pth')}",
    ]
    if trainer.resume_batch:
        lines.insert(5, f"resuming     epoch {trainer.start_epoch} at batch {trainer.resume_batch:,} of {trainer.batches_per_epoch:,}")
    logger.info("\n  " + "\n  ".join(lines))
    logger.debug("%s", model)


def _size(loader) -> str:
    if loader is None:
        return "no"
    dataset = getattr(loader, "base_dataset", None) or getattr(loader, "dataset", None)
    return f"{len(dataset):,}" if dataset is not None else "?"


if __name__ == "__main__":
    sys.exit(main())
