"""Evaluate a checkpoint on the test split, and optionally export the model for serving.

    python test.py -r saved/<name>/<run_id>/checkpoints/best.pth [-c CONFIG] [--out FILE] [key=value ...]
    python test.py -r CHECKPOINT --export model.pt2
    python test.py -r CV_RUN_DIR [--fold I]      a cross-validation's fold ensemble (or fold I's best model)
    torchrun --standalone --nproc_per_node=2 test.py -r CHECKPOINT      the same numbers, in shards

The config comes from inside the checkpoint unless ``-c`` gives another; the data loader is built
with ``training=False`` (the test split). The batches go through the run's own Trainer class
(``trainer.type``), so a ``validation_step`` of your own counts here as it did in validation,
with ``self.epoch`` the checkpoint's epoch. The checkpoint is read with ``weights_only=True`` and its
config may name only this project's code and the libraries it builds from: it is data and never
runs other code. No run directory is created; every metric goes to ``<run_dir>/test_metrics.json``
(or ``--out``), the same for any batch size and any number of processes. For a cross-validation
(``train.py --folds K``) the model is the mean of the folds' best models (``trainer/ensemble.py``)
and the metrics go to ``CV_RUN_DIR/test_metrics.json``; with ``--fold I`` to that fold's folder.
"""

from __future__ import annotations

from utils.signals import exit_on_signals, exit_quietly, watch_launcher

if __name__ == "__main__":
    exit_on_signals()  # before the heavy imports: a signal ends the script with 130/143, no traceback, nothing written

import argparse
import json
import os
from pathlib import Path

import torch

from app.cv import folds_of, is_cv_dir
from app.loading import add_loading_arguments, load_trained_model
from app.session import build_trainer, evaluation_settings
from trainer.batches import BatchReader
from utils import distributed
from utils.checkpoints import run_dir_of
from utils.errors import UserError, first_line, report
from utils.files import OutputClaim, file_error, refuse_link, temporary_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the test split.")
    add_loading_arguments(parser)
    parser.add_argument("--out", help="where to write the metrics JSON (default: <run_dir>/test_metrics.json)")
    parser.add_argument("--export", help="also export the model with torch.export to this .pt2 file")
    parser.add_argument("--force", action="store_true", help="replace an existing --out or --export file you named")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if distributed.launched_by_torchrun():
        watch_launcher()
    claims: list[OutputClaim] = []
    try:
        if int(os.environ.get("RANK", 0)) == 0:  # rank 0 writes the results: it claims them before any work
            claims = claim_outputs(args)
        evaluate(args, *claims)
    except Exception as exc:
        return report(exc, distributed.rank(), distributed.is_distributed())
    finally:
        for claim in claims:
            claim.release()
        distributed.cleanup()
    return 0


def claim_outputs(args: argparse.Namespace) -> list[OutputClaim]:
    """The metrics file (``--out``, or the run's own ``test_metrics.json``, replaced freely) and the
    ``--export`` file, each this process's until it ends; a file you named needs ``--force`` to be replaced."""
    if args.export and Path(args.export).suffix != ".pt2" and not _is_folder(Path(args.export)):
        raise UserError(f"--export: {Path(args.export).name} must end in .pt2 (a torch.export program, loaded with torch.export.load)")
    if args.export and args.fold is None and is_cv_dir(args.resume):
        raise UserError(f"--export: {args.resume} is a cross-validation's ensemble of models; export one fold's with --fold I")
    out = Path(args.out) if args.out else default_out(args)
    if not args.out:
        refuse_link(out)  # the run directory's own file: a link there is not replaced (or followed) unasked
    claims = [OutputClaim(out, "--out", force=args.force or not args.out)]
    if args.export:
        claims.append(OutputClaim(Path(args.export), "--export", force=args.force))
    try:
        for claim in claims:
            claim.acquire()
    except BaseException:
        for claim in claims:
            claim.release()
        raise
    return claims


def default_out(args: argparse.Namespace) -> Path:
    """``test_metrics.json`` in the run directory evaluated: a CV's own (its ensemble) or a fold's (``--fold``)."""
    if is_cv_dir(args.resume):
        folder = Path(args.resume)
        folds_of(folder, args.fold)
        return (folder / f"fold-{args.fold}" if args.fold is not None else folder) / "test_metrics.json"
    return run_dir_of(args.resume) / "test_metrics.json"


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False  # a name too long: the claim says so


def evaluate(args: argparse.Namespace, out: OutputClaim | None = None, export: OutputClaim | None = None) -> dict:
    loaded = load_trained_model(args)
    config, device, model = loaded.config, loaded.device, loaded.model
    trainer = build_trainer(config, device, model=model, settings=evaluation_settings(config))
    trainer.progress.epoch, trainer.progress.global_step = loaded.checkpoint.epoch or 0, loaded.checkpoint.global_step or 0
    data_loader = config.init_obj("data_loader", training=False)
    read_batch = trainer.evaluator.reader = BatchReader(device, data_loader, config.settings.target_key, config.settings.channels_last)
    results = trainer.evaluate(data_loader)
    samples = len(getattr(data_loader, "base_dataset", data_loader.dataset))
    source = {"checkpoint": str(args.resume), "epoch": loaded.checkpoint.epoch}
    if loaded.folds is not None:  # an ensemble: the CV directory, and which folds' best models it averages
        source = {"checkpoint": str(args.resume), "folds": loaded.folds, "epochs": loaded.epochs}
    results = {**source, "weights": loaded.weights, "samples": samples, **results}
    if distributed.is_main_process():
        shown = {key: value for key, value in results.items() if not isinstance(value, list)}
        width = max(len(key) for key in shown)
        print(
            "\n".join(
                f"{key:<{width}}  {value:.6g}" if isinstance(value, float) else f"{key:<{width}}  {value}" for key, value in shown.items()
            )
        )
        if loaded.folds is not None:
            print(
                f"the mean of {len(loaded.folds)} folds' best models (folds {', '.join(map(str, loaded.folds))}; epochs {', '.join(map(str, loaded.epochs))})"
            )
        publish(out, (json.dumps(results, indent=2) + "\n").encode())
        print(f"wrote {out.path}")
        if export is not None:
            export_model(model, read_batch, data_loader, export)
    return results


def publish(claim: OutputClaim, data: bytes) -> None:
    tmp = temporary_name(claim.path)
    try:
        tmp.write_bytes(data)
        claim.publish(tmp)
    except OSError as exc:
        raise file_error(claim.flag, claim.path, exc, f"pass {claim.flag} with a writable place") from None
    finally:
        tmp.unlink(missing_ok=True)


def export_model(model: torch.nn.Module, read_batch: BatchReader, data_loader, claim: OutputClaim) -> None:
    """Save the whole model as a ``torch.export`` program: load it with
    ``torch.export.load(path).module()`` and call it, no code of this project needed.

    The batch dimension is exported as dynamic, so any batch size works.
    """
    inputs, _ = read_batch(next(iter(data_loader)))
    args, kwargs = ((), inputs) if isinstance(inputs, dict) else ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs), {})
    batch = torch.export.Dim("batch", min=1)

    def dynamic(tensor: torch.Tensor) -> dict:  # the batch and every other dimension (e.g. text length) may vary
        return {0: batch, **{dim: torch.export.Dim.AUTO for dim in range(1, tensor.dim())}}

    shapes = {name: dynamic(value) for name, value in kwargs.items()} if kwargs else tuple(dynamic(value) for value in args)
    try:
        program = torch.export.export(model.eval(), args, kwargs or None, dynamic_shapes=shapes)
    except Exception as exc:  # torch.export's own errors name the unsupported construct
        raise UserError(f"--export: torch.export could not trace {type(model).__name__}: {first_line(exc)}") from None
    path, tmp = claim.path, temporary_name(claim.path)
    try:
        torch.export.save(program, str(tmp))
        claim.publish(tmp)
    except OSError as exc:
        raise file_error("--export", path, exc, "pass --export with a writable place") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"exported {path} (load with torch.export.load({str(path)!r}).module())")


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as stopped:  # a signal (exit_on_signals)
        code = stopped.code
    exit_quietly(code)
