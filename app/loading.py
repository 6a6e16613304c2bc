"""A trained model back from its checkpoint, for ``test.py`` and ``predict.py``.

The config comes from inside the checkpoint (resolved under the checkpoint trust rules, see
``app/config/names.py``) unless ``-c`` passes one; the model is rebuilt from it and loaded with
the weights evaluation uses: the EMA weights when the run kept them and ``trainer.ema_evaluate``
is on, unless ``--weights raw`` asks for the trained weights themselves.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch
from torch import nn

from app.config import Config
from logger import setup_logging
from utils import distributed
from utils.checkpoints import Checkpoint, load_checkpoint, load_weights
from utils.device import limit_visible_gpus, select_device
from utils.errors import UserError


def add_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``test.py`` and ``predict.py`` share."""
    parser.add_argument("-r", "--resume", required=True, help="checkpoint to evaluate (a run's .pth file, or a weights file with -c)")
    parser.add_argument("-c", "--config", help="config to use instead of the one inside the checkpoint")
    parser.add_argument("-d", "--device", dest="devices", help="GPU indices to make visible, e.g. 0")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto", help="EMA or raw weights (auto: as the run validated)")
    parser.add_argument("--trust-checkpoint", action="store_true", help="let a checkpoint's config name code outside this project")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")


@dataclass
class Loaded:
    config: Config
    checkpoint: Checkpoint
    device: torch.device
    model: nn.Module
    weights: str
    """``"ema"`` or ``"raw"``: which weights the model holds."""


def load_trained_model(args: argparse.Namespace) -> Loaded:
    limit_visible_gpus(args.devices)
    checkpoint = load_checkpoint(args.resume)
    if args.config:
        config = Config.from_file(args.config, args.overrides)
    elif checkpoint.config is None:
        raise UserError(f"{args.resume}: a weights file without a config; pass the run's config with -c CONFIG")
    else:
        config = Config.from_dict(checkpoint.config, f"{args.resume} (its config)", args.overrides, trusted=args.trust_checkpoint)
    setup_logging(config.settings.verbosity, int(os.environ.get("RANK", 0)))
    device = select_device(config["device"], distributed.launched_by_torchrun(), distributed.local_rank())
    distributed.init_distributed(device)
    if args.weights == "ema" and not checkpoint.has_ema:
        raise UserError(f"--weights ema: {args.resume} holds no EMA weights (the run had trainer.ema_decay null); use --weights raw")
    use_ema = checkpoint.has_ema and (args.weights == "ema" or (args.weights == "auto" and config.settings.ema_evaluate))
    from app.session import build_model

    model = build_model(config)
    load_weights(model, checkpoint.weights(ema=use_ema), strict=True, source=str(args.resume))
    model.to(device).eval()
    return Loaded(config, checkpoint, device, model, "ema" if use_ema else "raw")
