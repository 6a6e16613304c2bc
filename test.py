"""Evaluate a checkpoint on the test split, and optionally export the model for serving.

    python test.py -r saved/<name>/<run_id>/checkpoints/best.pth [-c CONFIG] [--out FILE] [key=value ...]
    python test.py -r CHECKPOINT --export model.pt2

The config comes from inside the checkpoint unless ``-c`` gives another; the data loader is
built with ``training=False`` (the test split). The checkpoint is read with
``weights_only=True``: it is data and never runs code. No run directory is created; metrics go
to ``<run_dir>/test_metrics.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from logger import setup_logging
from trainer import Evaluator
from utils.builders import build_loss, build_metrics, load_weights
from utils.checkpoint import load_checkpoint, run_dir_of
from utils.config import Config
from utils.device import limit_visible_gpus, select_device
from utils.errors import EXIT_USER_ERROR, UserError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the test split.")
    parser.add_argument("-r", "--resume", required=True, help="checkpoint to evaluate")
    parser.add_argument("-c", "--config", help="config to use instead of the one inside the checkpoint")
    parser.add_argument("-d", "--device", dest="devices", help="GPU indices to make visible, e.g. 0")
    parser.add_argument("--out", help="where to write the metrics JSON (default: <run_dir>/test_metrics.json)")
    parser.add_argument("--export", help="also export the model with torch.export to this .pt2 file")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        evaluate(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def evaluate(args: argparse.Namespace) -> dict:
    limit_visible_gpus(args.devices)
    checkpoint = load_checkpoint(args.resume)
    if args.config:
        config = Config.from_file(args.config, args.overrides)
    else:
        config = Config.from_dict(checkpoint["config"], f"{args.resume} (its config)", args.overrides)
    setup_logging(config.trainer["verbosity"])
    device = select_device(config["device"], distributed=False, local_rank=0)

    data_loader = config.init_obj("data_loader", training=False)
    model = config.init_obj("arch")
    load_weights(model, checkpoint["model"], strict=True, source=args.resume)
    model.to(device).eval()
    evaluator = Evaluator(model, build_loss(config), build_metrics(config), device, config.trainer["amp"])
    results = evaluator.evaluate(data_loader)
    results = {"checkpoint": str(args.resume), "epoch": checkpoint["epoch"], "samples": len(data_loader.dataset), **results}

    width = max(len(key) for key in results)
    print(
        "\n".join(
            f"{key:<{width}}  {value:.6g}" if isinstance(value, float) else f"{key:<{width}}  {value}" for key, value in results.items()
        )
    )
    out = Path(args.out) if args.out else run_dir_of(args.resume) / "test_metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    if args.export:
        export_model(model, evaluator, data_loader, Path(args.export))
    return results


def export_model(model: torch.nn.Module, evaluator: Evaluator, data_loader, path: Path) -> None:
    """Save the whole model as a ``torch.export`` program: load it with
    ``torch.export.load(path).module()`` and call it, no code of this project needed.

    The batch dimension is exported as dynamic, so any batch size works.
    """
    inputs, _ = evaluator.prepare(next(iter(data_loader)))
    args, kwargs = ((), inputs) if isinstance(inputs, dict) else ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs), {})
    batch = torch.export.Dim("batch", min=1)

    def dynamic(tensor: torch.Tensor) -> dict:  # the batch and every other dimension (e.g. text length) may vary
        return {0: batch, **{dim: torch.export.Dim.AUTO for dim in range(1, tensor.dim())}}

    shapes = {name: dynamic(value) for name, value in kwargs.items()} if kwargs else tuple(dynamic(value) for value in args)
    try:
        program = torch.export.export(model.eval(), args, kwargs or None, dynamic_shapes=shapes)
    except Exception as exc:  # torch.export's own errors name the unsupported construct
        raise UserError(f"--export: torch.export could not trace {type(model).__name__}: {str(exc).splitlines()[0]}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    print(f"exported {path} (load with torch.export.load({str(path)!r}).module())")


if __name__ == "__main__":
    sys.exit(main())
