"""A trained model back from its checkpoint, for ``test.py`` and ``predict.py``.

The config comes from inside the checkpoint (resolved under the checkpoint trust rules, see
``app/config/names.py``) unless ``-c`` passes one; the model is rebuilt from it and loaded with
the weights evaluation uses: the EMA weights when the run kept them and ``trainer.ema_evaluate``
is on, unless ``--weights raw`` asks for the trained weights themselves.

``-r CV_RUN_DIR`` (a cross-validation, ``app/cv.py``) loads each fold's best checkpoint and
answers with their mean (``trainer/ensemble.py``); ``--fold i`` takes fold ``i`` alone.

:func:`load_model` is the same for your own code: a trained model inside another run (a teacher
to distil from, a frozen encoder), under the same trust rule, its file's hash in the run's manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from app.config import Config
from logger import setup_logging
from utils import distributed
from utils.checkpoints import Checkpoint, load_checkpoint, load_weights
from utils.device import limit_visible_gpus, select_device
from utils.errors import UserError
from utils.fetching import restoring


def add_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``test.py`` and ``predict.py`` share."""
    parser.add_argument("-r", "--resume", required=True, help="checkpoint to evaluate (a run's .pth file, or a weights file with -c)")
    parser.add_argument("-c", "--config", help="config to use instead of the one inside the checkpoint")
    parser.add_argument("-d", "--device", dest="devices", help="GPU indices to make visible, e.g. 0")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto", help="EMA or raw weights (auto: as the run validated)")
    parser.add_argument("--trust-checkpoint", action="store_true", help="let a checkpoint's config name code outside this project")
    parser.add_argument("--fold", type=int, metavar="I", help="with -r CV_RUN_DIR: fold I's best model instead of the folds' ensemble")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")


@dataclass
class Loaded:
    """A trained model ready to evaluate or predict (``test.py``, ``predict.py``): its config, checkpoint,
    device and which weights it holds; for a cross-validation, the fold ensemble."""

    config: Config
    checkpoint: Checkpoint
    device: torch.device
    model: nn.Module
    weights: str
    """``"ema"`` or ``"raw"``: which weights the model holds."""
    folds: list[int] | None = None
    """The folds whose models ``model`` averages (a cross-validation's ensemble), or None."""
    epochs: list[int | None] | None = None
    """The epoch of each fold's checkpoint in the ensemble."""


def load_trained_model(args: argparse.Namespace) -> Loaded:
    from app.cv import is_cv_dir

    if is_cv_dir(args.resume):
        return load_folds(args)
    if args.fold is not None:
        raise UserError(f"--fold: {args.resume} is not a cross-validation's run directory; --fold picks one of its folds")
    return load_one(args, args.resume)


def load_folds(args: argparse.Namespace) -> Loaded:
    """Every fold's best model as one ensemble (or fold ``--fold`` alone). Only folds the CV's
    summary lists as finished are taken (a fold still training, or stopped, has no final best
    model), and the folds must be the same model: the same ``arch`` and the same ``loss``."""
    from app.cv import CV_FILE, check_fold, read_description, read_summary
    from trainer.ensemble import Ensemble, averages_probabilities

    folder = Path(args.resume)
    description = read_description(folder)  # no link among its entries: a fold-i linked to another run is refused
    folds = description["folds"]
    if args.fold is not None and not 0 <= args.fold < folds:
        raise UserError(f"--fold: {args.fold} is not a fold of {folder} (0 to {folds - 1})")
    chosen = [args.fold] if args.fold is not None else list(range(folds))
    finished = read_summary(folder, folds, f"continue the cross-validation with train.py -r {folder}")
    missing = [fold for fold in chosen if fold not in finished]
    if missing:
        raise UserError(
            f"{folder}: fold(s) {', '.join(map(str, missing))} not finished (cv_summary.json); continue the cross-validation with "
            f"train.py -r {folder}" + ("" if args.fold is not None else ", or evaluate a finished fold with --fold I")
        )
    for fold in chosen:
        if not (folder / f"fold-{fold}").exists():
            raise UserError(f"{folder / f'fold-{fold}'}: fold {fold} is gone (cv_summary.json lists it finished); train it again with train.py -r {folder}")
        check_fold(folder, fold, folds, description["config"])
    first: Loaded | None = None
    models, weights, epochs = [], set(), []
    for fold in chosen:  # one checkpoint held at a time: the ensemble keeps only the models
        one = load_one(args, best_checkpoint(folder / f"fold-{fold}", fold))
        stored = one.checkpoint.config if isinstance(one.checkpoint.config, dict) else {}
        args_of = (stored.get("data_loader") or {}).get("args") or {}
        if (args_of.get("folds"), args_of.get("fold")) != (folds, fold):  # the checkpoint's own word, as well as its folder's files
            raise UserError(
                f"{folder / f'fold-{fold}'}: its checkpoint is fold {args_of.get('fold')!r} of {args_of.get('folds')!r}, "
                f"not fold {fold} of {folds} ({CV_FILE}); it is no fold of this cross-validation"
            )
        if first is None:
            first = one
        else:
            for key in ("arch", "loss"):
                if one.config[key] != first.config[key]:
                    raise UserError(f"{folder}: fold {fold}'s {key} differs from fold {chosen[0]}'s; the folds of one ensemble must be one model")
        models.append(one.model)
        weights.add(one.weights)
        epochs.append(one.checkpoint.epoch)
    if len(models) == 1:
        return first
    ensemble = Ensemble(models, probabilities=averages_probabilities(first.config)).to(first.device).eval()
    return Loaded(first.config, first.checkpoint, first.device, ensemble, "/".join(sorted(weights)), folds=chosen, epochs=epochs)


def best_checkpoint(folder: Path, fold: int) -> str:
    from app.cv import fold_checkpoint

    found = fold_checkpoint(folder, ("best", "last"))
    if found is None:
        raise UserError(f"{folder}: fold {fold} has no checkpoint; move {folder} away to train it again with train.py -r {folder.parent}")
    return str(found)


def load_one(args: argparse.Namespace, path: str) -> Loaded:
    limit_visible_gpus(args.devices)
    checkpoint = load_checkpoint(path)
    if args.config:
        config = Config.from_file(args.config, args.overrides)
    elif checkpoint.config is None:
        raise UserError(f"{path}: a weights file without a config; pass the run's config with -c CONFIG")
    else:
        config = Config.from_dict(checkpoint.config, f"{path} (its config)", args.overrides, trusted=args.trust_checkpoint)
    setup_logging(config.settings.verbosity, int(os.environ.get("RANK", 0)))
    device = select_device(config["device"], distributed.launched_by_torchrun(), distributed.local_rank())
    distributed.init_distributed(device)
    if args.weights == "ema" and not checkpoint.has_ema:
        raise UserError(f"--weights ema: {path} holds no EMA weights (the run had trainer.ema_decay null); use --weights raw")
    use_ema = checkpoint.has_ema and (args.weights == "ema" or (args.weights == "auto" and config.settings.ema_evaluate))
    from app.session import build_model

    with restoring():  # every weight comes from the checkpoint: pretrained ones are neither read nor fetched
        model = build_model(config)
    load_weights(model, checkpoint.weights(ema=use_ema), strict=True, source=str(path))
    model.to(device).eval()
    return Loaded(config, checkpoint, device, model, "ema" if use_ema else "raw")


LOADED_MODELS: list[dict] = []
"""What :func:`load_model` read in this process (path, sha256, weights, epoch); a new run's
``manifest.json`` lists them under ``data.loaded_models``."""


def load_model(path: str | Path, weights: str = "auto", trust_checkpoint: bool = False) -> nn.Module:
    """A trained model from a run's checkpoint (``.pth`` or ``.dcp``), rebuilt from the config stored
    inside it, holding the weights ``test.py`` would evaluate (``weights``: ``"auto"``, ``"ema"`` or
    ``"raw"``), in eval mode, on the CPU. Use it in a Trainer subclass for a teacher or a frozen
    part (``.requires_grad_(False)``; kept outside ``self.model``, it is in no checkpoint of the new
    run, and the file's hash is in its manifest instead). The checkpoint is data: its config may
    name only this project's code and the libraries it builds from, unless ``trust_checkpoint``."""
    if weights not in ("auto", "ema", "raw"):
        raise UserError(f"load_model: weights must be 'auto', 'ema' or 'raw', got {weights!r}")
    checkpoint = load_checkpoint(path)
    if checkpoint.config is None:
        raise UserError(f"{path}: a weights file without a config; load_model needs a run's checkpoint (checkpoints/best.pth)")
    config = Config.from_dict(checkpoint.config, f"{path} (its config)", [], trusted=trust_checkpoint)
    if weights == "ema" and not checkpoint.has_ema:
        raise UserError(f"load_model: {path} holds no EMA weights (the run had trainer.ema_decay null); use weights='raw'")
    use_ema = checkpoint.has_ema and (weights == "ema" or (weights == "auto" and config.settings.ema_evaluate))
    from app.session import build_model

    model = build_model(config)
    load_weights(model, checkpoint.weights(ema=use_ema), strict=True, source=str(path))
    record = {"path": str(path), "sha256": file_digest(Path(path)), "weights": "ema" if use_ema else "raw", "epoch": checkpoint.epoch}
    LOADED_MODELS.append(record)
    return model.eval()


def file_digest(path: Path) -> str:
    """sha256 of a file, or of a snapshot folder's files (names and bytes, in name order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
