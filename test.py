"""Evaluate a checkpoint on the test split, and optionally export the model for serving.

    python test.py -r saved/<name>/<run_id>/checkpoints/best.pth [-c CONFIG] [--out FILE] [key=value ...]
    python test.py -r CHECKPOINT --export model.pt2     (or model.onnx): raw inputs in, final predictions out (docs/export.md)
    python test.py -r CV_RUN_DIR [--fold I]      a cross-validation's fold ensemble (or fold I's best model); --export ships it too
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

from utils.ending import catch_signals

if __name__ == "__main__":
    catch_signals(None)  # before the heavy imports: a signal ends the script with 130/143, no traceback, nothing written

import argparse
import copy
import json
import os
from pathlib import Path

from app.cv import folds_of, is_cv_dir
from app.export import check_one_serving_state, describe, export, format_of, raw_batches, served_model
from app.loading import add_loading_arguments, load_trained_model
from app.session import build_trainer, evaluation_settings
from trainer.batches import BatchReader
from utils import distributed
from utils.checkpoints import run_dir_of
from utils.ending import Hooks, finish, leave, starting
from utils.files import OutputLock, file_error, refuse_link, temporary_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the test split.")
    add_loading_arguments(parser)
    parser.add_argument("--out", help="where to write the metrics JSON (default: <run_dir>/test_metrics.json)")
    parser.add_argument(
        "--export",
        help="also export the model with its serving transforms: FILE.pt2 (torch.export) or FILE.onnx (ONNX), checked on the test split",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out or --export file you named")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    starting(None)
    outputs: list[OutputLock] = []

    def body() -> int:
        if int(os.environ.get("RANK", 0)) == 0:  # rank 0 writes the results: it locks them before any work
            outputs.extend(lock_outputs(args))
        evaluate(args, *outputs)
        return 0

    return finish(body, hooks=Hooks(cleanup=lambda: [output.release() for output in outputs]))


def lock_outputs(args: argparse.Namespace) -> list[OutputLock]:
    """The metrics file (``--out``, or the run's own ``test_metrics.json``, replaced freely) and the
    ``--export`` file, each this process's until it ends; a file you named needs ``--force`` to be replaced."""
    if args.export and not _is_folder(Path(args.export)):
        format_of(Path(args.export))  # .pt2 or .onnx, and the onnx extra installed: before any work
    out = Path(args.out) if args.out else default_out(args)
    if not args.out:
        refuse_link(out)  # the run directory's own file: a link there is not replaced (or followed) unasked
    outputs = [OutputLock(out, "--out", force=args.force or not args.out)]
    if args.export:
        outputs.append(OutputLock(Path(args.export), "--export", force=args.force))
    try:
        for output in outputs:
            output.acquire()
    except BaseException:
        for output in outputs:
            output.release()
        raise
    return outputs


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
        return False  # a name too long: the lock says so


def evaluate(args: argparse.Namespace, out: OutputLock | None = None, export: OutputLock | None = None) -> dict:
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
        if export is not None:  # first: a refused export leaves nothing, the metrics file included
            export_model(loaded, read_batch, data_loader, export, args.resume)
        publish(out, (json.dumps(results, indent=2) + "\n").encode())
        print(f"wrote {out.path}")
    return results


def publish(output: OutputLock, data: bytes) -> None:
    tmp = temporary_name(output.path)
    try:
        tmp.write_bytes(data)
        output.publish(tmp)
    except OSError as exc:
        raise file_error(output.flag, output.path, exc, f"pass {output.flag} with a writable place") from None
    finally:
        tmp.unlink(missing_ok=True)


def export_model(loaded, read_batch: BatchReader, data_loader, output: OutputLock, source: str) -> dict:
    """Ship the model with its serving transforms as one module (``app/export.py``): a ``.pt2``
    (load it with ``torch.export.load(path).module()``) or an ``.onnx`` (ONNX Runtime), checked on
    the test split against this model in eager mode before it is kept; no code of this project
    is needed to load it. Exported on the CPU, with the batch dimension dynamic. A cross-validation's
    fold ensemble ships as one module, when its folds share one serving state."""
    state = loaded.checkpoint.data.get("serving") if loaded.checkpoint.is_run else None
    if loaded.folds is not None:
        check_one_serving_state(Path(source), loaded.folds, state)
    served = served_model(copy.deepcopy(loaded.model).cpu(), data_loader, state)
    batches = raw_batches(data_loader, read_batch, served.before is not None)
    record = export(served, batches, output.path, output.publish)
    print(describe(output.path, record))
    return record


if __name__ == "__main__":
    leave(main)
