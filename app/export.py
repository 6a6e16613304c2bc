"""Ship a trained model: one module from raw inputs to final predictions, as ``.pt2`` or ``.onnx``,
checked against the checkpoint's model before it is kept.

What ships is a :class:`base.serving.ServedModel`: the data loader's serving transforms (built
from the checkpoint's ``serving`` state, ``base/serving.py``) around the model, in eval mode.

- ``.pt2``: ``torch.export.export``, saved with ``torch.export.save``; load it with
  ``torch.export.load(path).module()`` and call it as the served model is called.
- ``.onnx``: ``torch.onnx.export(..., dynamo=True)`` at opset :data:`OPSET` (needs the ``onnx``
  extra: ``onnx``, ``onnxscript``, ``onnxruntime``); inputs and outputs are named (see
  :func:`leaf_names`), and every input's first dimension is the dynamic axis ``batch``.

Every export is traced on the first batch of the split's raw inputs (``serving_inputs()``, or the
loader's own batch inputs) with the batch dimension dynamic (other dimensions too, e.g. a text
length), then loaded back from the written file (ONNX through ONNX Runtime) and run on up to
:data:`CHECK_BATCHES` batches of the split and on one sample alone (a batch size other than the
traced one), beside the same served module in eager mode. The largest absolute and relative
differences are printed and written to ``FILE.check.json`` (``model.onnx.check.json``, so a
``.pt2`` and an ``.onnx`` of one model can sit side by side). An element differs too much when
``|export - eager| > ATOL + RTOL * |eager|`` (``torch.allclose``'s rule); then the export is
refused and nothing is left: neither the file nor its check.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from base.serving import ServedModel, Serving
from utils.errors import UserError, first_line
from utils.files import file_error, temporary_name, write_atomic
from utils.user_code import relative, user_frame

FORMATS = {".pt2": "pt2", ".onnx": "onnx"}
"""File suffix -> format."""
OPSET = 18
"""The ONNX opset the exports target (ONNX Runtime 1.17 and later run it)."""
ATOL, RTOL = 1e-4, 1e-4
"""The tolerance of the check (see the module docstring); float32 rounding stays far below it."""
CHECK_BATCHES = 16
"""At most this many batches of the split are compared (plus one single sample)."""
ONNX_EXTRA = "pip install -e '.[onnx]' (onnx, onnxscript, onnxruntime)"


def format_of(path: Path, key: str = "--export") -> str:
    """``"pt2"`` or ``"onnx"`` by the file's suffix; anything else is one line."""
    found = FORMATS.get(Path(path).suffix)
    if found is None:
        raise UserError(f"{key}: {Path(path).name} must end in .pt2 (a torch.export program) or .onnx (ONNX, opset {OPSET}); rename it")
    if found == "onnx":
        require_onnx(key)
    return found


def require_onnx(key: str = "--export") -> None:
    """The ONNX exporter and runtime are installed, or one line naming the install command."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{key}: an .onnx export needs {', '.join(missing)}, not installed here; install the onnx extra: {ONNX_EXTRA}")


def check_path(path: Path) -> Path:
    """Where the check of the export at ``path`` is written."""
    return path.with_name(path.name + ".check.json")


def served_model(model: nn.Module, data_loader: Any, state: dict | None, key: str = "--export") -> ServedModel:
    """The model with the loader's serving transforms built from ``state`` (a checkpoint's), in eval
    mode. A loader with transforms but no saved state (a checkpoint
    from before the seam existed) is one line: refitting here could ship other statistics."""
    transforms = getattr(data_loader, "serving_transforms", None)
    wants_state = callable(getattr(data_loader, "serving_state", None)) and bool(data_loader.serving_state())
    if wants_state and not state:
        raise UserError(
            f"{key}: the checkpoint holds no serving state, and {type(data_loader).__name__} has serving transforms; "
            f"export from a checkpoint written by this version (retrain, or resume it for an epoch)"
        )
    try:
        serving = transforms(state or {}) if callable(transforms) else Serving()
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:  # a checkpoint is data: it may not fit
        frame = user_frame(exc)
        where = f" at {relative(frame.filename)}:{frame.lineno}" if frame else ""
        raise UserError(
            f"{key}: the checkpoint's serving state does not fit {type(data_loader).__name__}.serving_transforms{where} "
            f"({type(exc).__name__}: {first_line(exc, 120)}); export from a checkpoint that this data loader wrote"
        ) from None
    return ServedModel(model, serving).eval()


def raw_batches(data_loader: Any, read_batch: Callable[[Any], tuple[Any, Any]], has_before: bool, key: str = "--export") -> list[Any]:
    """Up to :data:`CHECK_BATCHES` batches of the split's raw inputs, on the CPU."""
    custom = data_loader.serving_inputs() if callable(getattr(data_loader, "serving_inputs", None)) else None
    if custom is None and has_before:
        raise UserError(
            f"{key}: {type(data_loader).__name__} has serving transforms but no serving_inputs(); give it one returning "
            f"the split's raw inputs in batches (base/serving.py)"
        )
    batches: Iterable[Any] = custom if custom is not None else (read_batch(batch)[0] for batch in data_loader)
    taken = []
    for batch in batches:
        taken.append(_to_cpu(batch))
        if len(taken) == CHECK_BATCHES:
            break
    if not taken:
        raise UserError(f"{key}: the test split has no samples to trace and check the export on")
    return taken


def export(served: ServedModel, batches: list[Any], path: Path, publish: Callable[[Path], None], key: str = "--export") -> dict:
    """Export ``served`` to ``path`` in the format its suffix names, check it (module docstring) and
    publish it (``publish(tmp)`` moves the finished temporary file into place); the check's record."""
    fmt = format_of(path, key)
    example = _traceable(batches[0])
    args = tuple(example) if isinstance(example, tuple) else (example,)
    with torch.no_grad():
        reference_output = served(*args)
    inputs, outputs = leaf_names(args, "input"), leaf_names(reference_output, "output", single="prediction")
    tmp = temporary_name(path)
    try:
        with _quiet():
            if fmt == "pt2":
                _export_pt2(served, args, tmp, key)
                run = _run_pt2(tmp)
            else:
                _export_onnx(served, args, tmp, inputs, outputs, key)
                run = _run_onnx(tmp, inputs)
        try:
            record = check(served, run, batches, _batch_size(args))
        except UserError as exc:
            raise UserError(f"{key}: the {fmt} export of {path.name}: {exc}") from None
        record = {
            "file": path.name,
            "format": fmt,
            **({"opset": OPSET} if fmt == "onnx" else {}),
            "inputs": inputs,
            "outputs": outputs,
            **record,
        }
        shown = (
            f"largest difference from the checkpoint's model: {record['max_abs_diff']:.3g} absolute, {record['max_rel_diff']:.3g} relative"
        )
        if not record["passed"]:
            raise UserError(
                f"{key}: the {fmt} export of {path.name} differs from the checkpoint's model beyond the tolerance (atol {ATOL}, rtol {RTOL}): "
                f"{shown} (batch sizes {record['batch_sizes']}); nothing was written; export the model in float32, or report the operation"
            )
        publish(tmp)
    except OSError as exc:
        raise file_error(key, path, exc, f"pass {key} with a writable place") from None
    finally:
        tmp.unlink(missing_ok=True)
    try:
        write_atomic(check_path(path), json.dumps(record, indent=2) + "\n", key, f"pass {key} with a writable place")
    except UserError:
        path.unlink(missing_ok=True)  # an export without its check is not left behind
        raise
    return record


def describe(path: Path, record: dict) -> str:
    """The line that says an export was written and how close it came to the checkpoint's model."""
    return (
        f"exported {path} (largest difference from the checkpoint's model: {record['max_abs_diff']:.3g} absolute, "
        f"{record['max_rel_diff']:.3g} relative, at batch sizes {record['batch_sizes']}; check in {check_path(path).name})"
    )


# -- the formats ----------------------------------------------------------------------------------


def _dynamic_shapes(args: tuple) -> dict:
    """Every input's first dimension is ``batch``; the others may vary too (``Dim.AUTO``: a text length)."""
    batch = torch.export.Dim("batch", min=1)

    def dims(tensor: torch.Tensor) -> dict:
        return {0: batch, **{dim: torch.export.Dim.AUTO for dim in range(1, tensor.dim())}}

    return {"inputs": _map_leaves(args, dims)}


def _export_pt2(served: ServedModel, args: tuple, tmp: Path, key: str) -> None:
    program = _trace(lambda: torch.export.export(served, args, dynamic_shapes=_dynamic_shapes(args)), served, key)
    torch.export.save(program, str(tmp))


def _run_pt2(tmp: Path) -> Callable[..., Any]:
    module = torch.export.load(str(tmp)).module()
    return lambda *args: module(*args)


def _export_onnx(served: ServedModel, args: tuple, tmp: Path, inputs: list[str], outputs: list[str], key: str) -> None:
    # A trailing {}: torch.onnx reads a last dict of ``args`` as keyword arguments, and a dict input is positional here.
    program = _trace(
        lambda: torch.onnx.export(
            served,
            (*args, {}),
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(args),
            input_names=inputs,
            output_names=outputs,
            opset_version=OPSET,
            verbose=False,
        ),
        served,
        key,
    )
    program.save(str(tmp))


def _run_onnx(tmp: Path, inputs: list[str]) -> Callable[..., Any]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def run(*args: Any) -> dict:
        feed = {name: leaf.numpy() for name, leaf in zip(inputs, _leaves(args))}
        return dict(zip(names, (torch.from_numpy(value) for value in session.run(names, feed))))

    return run


_FAILED_AT = re.compile(r'The following call raised this error:\s*File "([^"]+)", line (\d+), in (\S+)\s*\n\s*(.*)')


def _trace(export_call: Callable[[], Any], served: ServedModel, key: str) -> Any:
    """``export_call()``; a model torch.export cannot trace is one line naming where and what to try."""
    try:
        return export_call()
    except Exception as exc:
        cause = exc
        while cause.__cause__ is not None and "torch.onnx" in type(cause).__module__:
            cause = cause.__cause__  # the ONNX exporter wraps torch.export's own error
        text = str(cause)
        name = type(served.model).__name__
        found = _FAILED_AT.search(text)
        where = f" at {relative(found.group(1))}:{found.group(2)} in {found.group(3)} ({found.group(4).strip()[:80]!r})" if found else ""
        if "data-dependent" in text:
            raise UserError(
                f"{key}: torch.export cannot trace {name}: data-dependent control flow{where} ({first_line(cause, 120)}); "
                f"rewrite that branch with torch.cond or torch.where, so it does not depend on a tensor's values"
            ) from None
        raise UserError(
            f"{key}: torch.export cannot trace {name}{where}: {type(cause).__name__}: {first_line(cause, 160)}; "
            f"see https://pytorch.org/docs/stable/export.html for what it supports"
        ) from None


@contextlib.contextmanager
def _quiet():
    """The exporters' warnings and log lines (symbolic shapes, axis names) are not the user's business here."""
    loggers = [
        logging.getLogger(name)
        for name in ("torch.fx.experimental.symbolic_shapes", "torch.export", "torch._dynamo", "torch.onnx", "onnxscript", "onnx_ir")
    ]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


# -- the check ------------------------------------------------------------------------------------


def check(served: ServedModel, run: Callable[..., Any], batches: list[Any], traced: int) -> dict:
    """Run the loaded export and ``served`` (eager) on ``batches`` and on one sample alone; the
    largest differences, the batch sizes seen, and whether every element is within the tolerance."""
    cases = [*batches, _first_sample(batches[0])]
    max_abs = max_rel = 0.0
    passed = True
    sizes = []
    for case in cases:
        args = tuple(case) if isinstance(case, tuple) else (case,)
        sizes.append(_batch_size(args))
        with torch.no_grad():
            expected = _leaves(served(*args))
            try:
                got = _leaves(run(*args))
            except Exception as exc:  # a guard torch.export put on a shape (a size it specialised), an ONNX Runtime error
                raise UserError(
                    f"the loaded export fails on a batch of {sizes[-1]} (traced with {traced}): {type(exc).__name__}: "
                    f"{first_line(exc, 160, last=True)}; the model's shapes were specialised while tracing, nothing was written"
                ) from None
        if len(got) != len(expected):
            raise UserError(f"the loaded export returned {len(got)} outputs, the model {len(expected)}; nothing was written")
        for have, want in zip(got, expected):
            have, want = have.detach().to(torch.float64).reshape(want.shape), want.detach().to(torch.float64)
            both_nan = have.isnan() & want.isnan()  # NaN where the eager model gives NaN is the same answer
            diff = (have - want).abs().masked_fill(both_nan, 0.0)
            max_abs = max(max_abs, float(diff.max()) if diff.numel() else 0.0)
            nonzero = (want != 0) & ~both_nan
            if bool(nonzero.any()):
                max_rel = max(max_rel, float((diff[nonzero] / want[nonzero].abs()).max()))
            passed = passed and bool((diff <= ATOL + RTOL * want.abs().nan_to_num()).all())
    return {
        "passed": passed,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "tolerance": {"atol": ATOL, "rtol": RTOL},
        "traced_batch_size": traced,
        "batch_sizes": sorted(set(sizes)),
        "batches": len(cases),
        "samples": sum(sizes),
    }


# -- nested inputs and outputs ----------------------------------------------------------------------


def leaf_names(value: Any, prefix: str, single: str | None = None) -> list[str]:
    """Names of the tensors of a nested value, in the order torch flattens them: a dict's keys
    (``text``; nested ``a.b``), a tuple's or list's positions (``input_0``), one tensor ``prefix``
    (or ``single``). The arguments of the served module are one tuple, so one tensor argument is
    ``input`` and a dict argument is named by its keys."""
    if isinstance(value, tuple) and prefix == "input":
        if len(value) == 1:
            return leaf_names(value[0], "input", "input")
        return [name for index, item in enumerate(value) for name in leaf_names(item, f"input_{index}")]
    if isinstance(value, dict):
        return [
            name
            for key, item in value.items()
            for name in leaf_names(item, str(key) if prefix in ("input", "output") else f"{prefix}.{key}")
        ]
    if isinstance(value, (tuple, list)):
        return [name for index, item in enumerate(value) for name in leaf_names(item, f"{prefix}_{index}")]
    return [single or prefix]


def _leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value] if isinstance(value, torch.Tensor) else []


def _map_leaves(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(value, dict):
        return {key: _map_leaves(item, fn) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_map_leaves(item, fn) for item in value)
    return fn(value) if isinstance(value, torch.Tensor) else None


def _to_cpu(value: Any) -> Any:
    if isinstance(value, list):
        value = tuple(value)
    return _map_leaves(value, lambda tensor: tensor.detach().cpu())


def _batch_size(args: tuple) -> int:
    leaves = _leaves(args)
    return int(leaves[0].shape[0]) if leaves else 0


def _traceable(batch: Any) -> Any:
    """The batch to trace on: a batch of one sample is doubled, since a dimension of size 1 is
    specialised by torch.export and would not stay dynamic."""
    args = tuple(batch) if isinstance(batch, tuple) else (batch,)
    if _batch_size(args) != 1:
        return batch
    return _map_leaves(batch, lambda tensor: torch.cat([tensor, tensor]))


def _first_sample(batch: Any) -> Any:
    return _map_leaves(batch, lambda tensor: tensor[:1])


# -- a cross-validation's fold ensemble ---------------------------------------------------------------


def check_one_serving_state(folder: Path, folds: list[int], state: dict | None, key: str = "--export") -> None:
    """The folds of an exported ensemble must share their serving transforms' state: one module
    cannot scale its inputs once for models that each trained on other statistics."""
    from app.loading import best_checkpoint
    from utils.checkpoints import load_checkpoint

    for fold in folds:
        other = load_checkpoint(best_checkpoint(folder / f"fold-{fold}", fold)).data.get("serving")
        if not same_state(other, state):
            raise UserError(
                f"{key}: the folds of {folder} fitted different serving states (fold {fold}'s differs from fold {folds[0]}'s), "
                f"so their ensemble is not one module; export one fold's with --fold I"
            )


def same_state(a: Any, b: Any) -> bool:
    """Equal plain data (tensors by value, an empty state and none alike)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return (a or None) == (b or None)


# -- at the end of training -----------------------------------------------------------------------


def export_at_end(config: Any, run_dir: Path) -> int:
    """``trainer.export``: the finished run's best model (``best``, else ``last``), with its serving
    transforms, as ``model.pt2`` / ``model.onnx`` in ``run_dir``, checked like ``test.py --export``.
    A refused export is one logged line and exit code 2; the run itself stays finished, its
    checkpoints untouched. Rank 0 only."""
    from logger import get_logger

    try:
        for path, record in export_finished_run(config, run_dir):
            get_logger().info("%s", describe(path, record))
    except UserError as exc:
        get_logger().error(
            "the run finished, but %s; its checkpoints are kept (export again with test.py -r CHECKPOINT --export FILE)", exc
        )
        return 2
    return 0


def export_finished_run(config: Any, run_dir: Path) -> list[tuple[Path, dict]]:
    from app.session import build_model
    from trainer.batches import BatchReader
    from utils.checkpoints import find_checkpoint, load_checkpoint, load_weights

    folder = run_dir / "checkpoints"
    found = next((path for name in ("best", "last") if (path := find_checkpoint(folder, name)) is not None), None)
    if found is None:
        raise UserError(f"trainer.export: {folder} holds no checkpoint to export")
    checkpoint = load_checkpoint(str(found))
    model = build_model(config)
    load_weights(model, checkpoint.weights(ema=checkpoint.has_ema and config.settings.ema_evaluate), strict=True, source=str(found))
    data_loader = config.init_obj("data_loader", training=False)
    read_batch = BatchReader(torch.device("cpu"), data_loader, config.settings.target_key)
    served = served_model(model.cpu(), data_loader, checkpoint.data.get("serving"), "trainer.export")
    batches = raw_batches(data_loader, read_batch, served.before is not None, "trainer.export")
    written = []
    for fmt in config.settings.export:
        path = run_dir / f"model.{fmt}"
        written.append((path, export(served, batches, path, lambda tmp, path=path: tmp.replace(path), key="trainer.export")))
    return written


def export_cv_at_end(folder: Path, folds: int, formats: list[str], trusted: bool) -> int:
    """``trainer.export`` of a finished cross-validation: its fold ensemble (the mean of the folds'
    best models, ``trainer/ensemble.py``) as one ``model.pt2`` / ``model.onnx`` in the CV run
    directory; the folds themselves export nothing (``app/cv.py``). As :func:`export_at_end`."""
    from logger import get_logger

    try:
        for path, record in export_ensemble(folder, folds, formats, trusted):
            get_logger().info("%s", describe(path, record))
    except UserError as exc:
        get_logger().error(
            "the cross-validation finished, but %s; its folds are kept (export again with test.py -r %s --export FILE)", exc, folder
        )
        return 2
    return 0


def export_ensemble(folder: Path, folds: int, formats: list[str], trusted: bool) -> list[tuple[Path, dict]]:
    from app.config import Config
    from app.loading import best_checkpoint
    from app.session import build_model
    from trainer.batches import BatchReader
    from trainer.ensemble import Ensemble, averages_probabilities
    from utils.checkpoints import load_checkpoint, load_weights

    models, configs, state = [], [], None
    for fold in range(folds):
        path = best_checkpoint(folder / f"fold-{fold}", fold)
        checkpoint = load_checkpoint(path)
        config = Config.from_dict(checkpoint.config, f"{path} (its config)", [], trusted=trusted)
        model = build_model(config)
        load_weights(model, checkpoint.weights(ema=checkpoint.has_ema and config.settings.ema_evaluate), strict=True, source=path)
        models.append(model.cpu().eval())
        configs.append(config)
        state = checkpoint.data.get("serving") if fold == 0 else state
    check_one_serving_state(folder, list(range(folds)), state, "trainer.export")
    config = configs[0]
    ensemble = Ensemble(models, probabilities=averages_probabilities(config)).eval()
    data_loader = config.init_obj("data_loader", training=False)
    served = served_model(ensemble, data_loader, state, "trainer.export")
    batches = raw_batches(
        data_loader, BatchReader(torch.device("cpu"), data_loader, config.settings.target_key), served.before is not None, "trainer.export"
    )
    written = []
    for fmt in formats:
        path = folder / f"model.{fmt}"
        written.append((path, export(served, batches, path, lambda tmp, path=path: tmp.replace(path), key="trainer.export")))
    return written
