"""Write a trained model's predictions to a file, one row per sample, in data set order.

    python predict.py -r CHECKPOINT --out predictions.jsonl                 the test split
    python predict.py -r CHECKPOINT --split val --out val.csv               the validation split (or train)
    python predict.py -r CHECKPOINT --input new_images/ --out new.jsonl     files without labels
    torchrun --standalone --nproc_per_node=2 predict.py -r CHECKPOINT --out p.npz   the same file, in shards
    python predict.py -r CV_RUN_DIR --out p.jsonl [--fold I]    a cross-validation's fold ensemble (or fold I)

The model and its weights are those ``test.py`` evaluates (EMA weights when the run kept them;
``--weights raw`` for the trained ones). Formats by extension: ``.jsonl``, ``.csv``, ``.npz``,
``.pt`` (see ``app/prediction_files.py`` for the columns). Under torchrun every process predicts
a contiguous run of whole batches and the rows are merged in order, so the file is byte for byte
the one a single process writes; nothing is held in memory but a batch. The file appears through
a rename, and an existing one is replaced only with ``--force``. A cross-validation's ensemble
(the mean of its folds' best models, ``trainer/ensemble.py``) predicts the test split or
``--input``; the validation and training splits differ by fold, so they need ``--fold I``.
"""

from __future__ import annotations

from utils.ending import catch_signals

if __name__ == "__main__":
    catch_signals(None)  # before the heavy imports: a signal ends the script with 130/143, no traceback, no output file

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from app.loading import add_loading_arguments, load_trained_model
from app.prediction_files import PartWriter, RowFormatter, lock_output, merge
from dataflow.epochs import ceil_div, prediction_batches, prediction_share
from logger import get_logger
from logger.progress import progress_iter
from trainer.batches import BatchReader
from trainer.predictor import Predictor
from utils import distributed
from utils.ending import Hooks, finish, leave, starting
from utils.errors import UserError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write a trained model's predictions to a file.")
    add_loading_arguments(parser)
    parser.add_argument("--out", required=True, help="the predictions file: .jsonl, .csv, .npz or .pt")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split to predict (default: test)")
    parser.add_argument("--input", help="predict files without labels instead: an image folder, a text file (one sentence per line)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--fields", help="comma-separated fields to write (default: all), e.g. prediction or mu,logvar")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    starting(None)
    outputs: list = []  # the output file, locked by rank 0 before any work

    def body() -> int:
        if args.fields is not None:
            names_of("--fields", args.fields)  # said before anything is locked or loaded
        if int(os.environ.get("RANK", 0)) == 0:  # rank 0 writes the file: it locks it before any work
            outputs.append(lock_output(Path(args.out), args.force))
        loaded = load_trained_model(args)
        if loaded.folds is not None and args.split != "test" and not args.input:
            raise UserError(f"--split {args.split}: each fold of {args.resume} has its own {args.split} split; pick one with --fold I")
        predict(args, loaded, outputs[0] if outputs else None)
        return 0

    return finish(body, hooks=Hooks(cleanup=lambda: [output.release() for output in outputs]))


def names_of(flag: str, text: str) -> list[str]:
    """The comma-separated names of a list-valued flag; an empty name (``--fields ""``, ``a,,b``) or a
    name given twice is one line, never a silent "all fields" or a column written twice."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise UserError(f"{flag}: {text!r} has an empty name; list names separated by commas, e.g. {flag} prediction or {flag} mu,logvar")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"{flag}: {', '.join(map(repr, twice))} given more than once in {text!r}; name each once")
    return names


def sources(args: argparse.Namespace, config):
    """(batches of this process, row formatter, batch count or None, labelled?, loader) for ``--split`` or ``--input``."""
    rank, world = distributed.rank(), distributed.world_size()
    if args.input:
        loader = config.init_obj("data_loader", training=False)
        if not callable(getattr(loader, "unlabeled_dataset", None)):
            raise UserError(
                f"--input: {config['data_loader']['type']} cannot read files without labels; "
                f"give it an unlabeled_dataset(self, path) method returning a Dataset of model inputs"
            )
        dataset = loader.unlabeled_dataset(args.input)
        share = prediction_share(len(dataset), loader.batch_size, rank, world)
        batches = prediction_batches(dataset, loader.batch_size, loader.collate_fn, rank, world)
        formatter = RowFormatter(getattr(loader, "classes", None), dataset.ids, dataset.id_key)
        return batches, formatter, ceil_div(len(share), loader.batch_size), False, loader
    if args.split == "test":
        loader = config.init_obj("data_loader", training=False)
    else:
        loader = config.init_obj("data_loader")
        if args.split == "val":
            loader = loader.split_validation() if callable(getattr(loader, "split_validation", None)) else None
            if loader is None:
                raise UserError("--split val: the data loader has no validation split; set data_loader.args.validation_split")
    if not callable(getattr(loader, "prediction_batches", None)):
        raise UserError(f"--split: {config['data_loader']['type']} has no prediction_batches(rank, world); subclass BaseDataLoader")
    batches = loader.prediction_batches(rank, world)
    return batches, RowFormatter(getattr(loader, "classes", None)), None, True, loader


def prediction_step(loaded):
    """The run's Trainer's ``predict_step`` when its class has one of its own (built as ``test.py`` builds it), else None: the forward."""
    from app.session import build_trainer, evaluation_settings
    from trainer import Trainer

    if loaded.config.trainer_class().predict_step is Trainer.predict_step:
        return None
    trainer = build_trainer(loaded.config, loaded.device, model=loaded.model, settings=evaluation_settings(loaded.config))
    trainer.progress.epoch, trainer.progress.global_step = loaded.checkpoint.epoch or 0, loaded.checkpoint.global_step or 0
    return trainer.predict


def predict(args: argparse.Namespace, loaded, output) -> None:
    config, device = loaded.config, loaded.device
    if device.type == "cpu":
        # CPU kernels may round differently with another number of threads; one per process makes the
        # file the same from any number of processes (use torchrun --nproc_per_node to use more cores).
        torch.set_num_threads(1)
    settings = config.settings
    batches, formatter, total, labelled, loader = sources(args, config)
    read_batch = BatchReader(device, loader, settings.target_key, settings.channels_last)
    fields = [name.strip() for name in args.fields.split(",") if name.strip()] if args.fields else None
    predictor = Predictor(loaded.model, device, settings.amp, read_batch, labelled, fields, step=prediction_step(loaded))
    show = settings.progress_bar and distributed.is_main_process() and sys.stderr.isatty()
    started = time.perf_counter()
    part = PartWriter(Path(args.out))
    try:
        for batch in predictor.predict(progress_iter(batches, "predict", show, total)):
            part.write(formatter.lines(batch))
        part.close()
        parts = [Path(path) for path in distributed.gather_objects(str(part.path))]
        rows = distributed.on_main(lambda: merge(output, parts))  # every rank keeps its part until rank 0 merged it
    finally:
        part.discard()
    if output is not None:
        elapsed = max(time.perf_counter() - started, 1e-9)
        get_logger().info("predicted %d rows with the %s weights in %.2f s (%.0f samples/s)", rows, loaded.weights, elapsed, rows / elapsed)
        print(f"wrote {output.path}")


if __name__ == "__main__":
    leave(main)
