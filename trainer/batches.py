"""How a batch reaches the model: moved to the device, split into ``(inputs, target)``, called.

The default rules (:func:`unpack_batch`):

- a tuple or list is ``(inputs, target)``; with more items, ``(*inputs, target)``;
- a dict has its target under ``trainer.target_key`` (default: the first of ``"label"``,
  ``"labels"``, ``"target"``, ``"targets"``, ``"y"``) and every other key is passed to the
  model as a keyword argument;
- the model may return a tensor or a dict: whatever it returns goes to the loss and metrics;
  a target that is a dict, a tuple or a list reaches them as it is.

To read your batches another way, give your data loader a method ``unpack_batch(self, batch)``
returning ``(inputs, target)``; the Trainer, ``test.py`` and ``predict.py`` use it instead.

**How many samples a batch holds** (:func:`count_samples`), the one count behind the epoch's
loss and metric averages, ``samples_per_sec``, the sums reduced over DDP processes, ``test.py``
and ``predict.py``: the size of dim 0 of its tensors. Every tensor of the inputs, then of the
target, is looked at (inside dicts, tuples, namedtuples and lists, at any depth; 0-dim tensors
and non-tensors are skipped), and they must all agree. A batch whose tensors disagree (a
sequence-first ``(T, B, F)`` input beside a ``(B,)`` target, a list of per-sample tensors), or
that holds no tensor, is one line at the pre-flight naming its structure. Fix it by putting the
samples along dim 0, or give the data loader a method ``batch_samples(self, inputs, target) ->
int`` and it is used instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from dataflow.epochs import TARGET_KEYS
from utils.errors import UserError
from utils.nested import map_tensors
from utils.user_code import user_frame, user_frame_in_text


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor of a (nested) batch; ``non_blocking`` overlaps copies from pinned memory.

    Tensors already there are returned as they are (the in-memory path's batches, for one).
    """
    return map_tensors(batch, lambda t: t if t.device == device else t.to(device, non_blocking=non_blocking))


def unpack_batch(batch: Any, target_key: str | None = None) -> tuple[Any, Any]:
    """Split a batch into ``(inputs, target)``; see the module docstring for the rules."""
    if isinstance(batch, dict):
        keys = (target_key,) if target_key else TARGET_KEYS
        key = next((k for k in keys if k in batch), None)
        if key is None:
            setting = f"trainer.target_key is {target_key!r}" if target_key else f"none of {list(TARGET_KEYS)} is there"
            raise UserError(
                f"batch: a dict batch with keys {sorted(map(str, batch))} has no target ({setting}); "
                f"set trainer.target_key to the key holding the target"
            )
        return {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return (batch[0] if len(batch) == 2 else tuple(batch[:-1])), batch[-1]
    raise UserError(
        f"batch: expected (inputs, target) or a dict with a target key, got {type(batch).__name__}; "
        f"give your data loader an unpack_batch(self, batch) method returning (inputs, target)"
    )


def tensor_leaves(value: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` for every tensor in ``value`` (paths as field names: ``target.cls``, ``inputs.0``)."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensor_leaves(item, f"{path}.{key}")
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for key, item in zip(value._fields, value):
            yield from tensor_leaves(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            yield from tensor_leaves(item, f"{path}.{position}")


def count_samples(inputs: Any, target: Any) -> int:
    """The number of samples in a batch: the dim 0 that every tensor of ``inputs`` and ``target``
    shares (see the module docstring). One line naming the structure when there is no such dim."""
    sizes: set[int] = set()
    _dim0s(inputs, sizes)
    _dim0s(target, sizes)
    if len(sizes) == 1:
        return sizes.pop()
    if not sizes:
        raise UserError(
            f"batch: no tensor with a batch dimension to count its samples by (inputs {describe(inputs)}, target {describe(target)}); "
            f"collate the samples into tensors, or give the data loader a batch_samples(self, inputs, target) method returning the batch's sample count"
        )
    found = [(path, t.shape[0]) for path, t in (*tensor_leaves(inputs, "inputs"), *tensor_leaves(target, "target")) if t.dim()]
    first, other = found[0], next(item for item in found if item[1] != found[0][1])
    raise UserError(
        f"batch: its tensors disagree on the number of samples (dim 0): {first[0]} has {first[1]}, {other[0]} has {other[1]} "
        f"(inputs {describe(inputs)}, target {describe(target)}); put the samples along dim 0 of every tensor "
        f"(e.g. batch_first=True), or give the data loader a batch_samples(self, inputs, target) method returning the batch's sample count"
    )


def _dim0s(value: Any, sizes: set[int]) -> None:
    """Add the dim 0 of every tensor in ``value`` (but 0-dim ones) to ``sizes``: the fast walk, no paths."""
    if isinstance(value, torch.Tensor):
        if value.dim():
            sizes.add(value.shape[0])
    elif isinstance(value, dict):
        for item in value.values():
            _dim0s(item, sizes)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _dim0s(item, sizes)


def describe(value: Any) -> str:
    """A batch's structure, for messages: ``tensor (64, 1, 8, 8) float32`` or ``dict {text: tensor (16, 12) int64}``."""
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, dict):
        return "dict {" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        inner = [describe(v) for v in value[:4]] + ([f"... {len(value)} items"] if len(value) > 4 else [])
        return f"{type(value).__name__} (" + ", ".join(inner) + ")"
    return type(value).__name__


def next_batch(batches: Iterator[Any]) -> Any:
    """``next(batches)``; a failure to read the data that is not a bug in the user's own code (a
    damaged image file, say) becomes one line naming it. A user's bug keeps its traceback."""
    try:
        return next(batches)
    except StopIteration:
        raise
    except UserError as exc:  # from a DataLoader worker it comes back with the worker's traceback as text
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise UserError(message.split("UserError: ", 1)[-1]) from None
    except Exception as exc:
        if user_frame(exc) is not None or user_frame_in_text(exc) is not None:
            raise
        lines = [line for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else type(exc).__name__  # a worker's message ends with the original error
        raise UserError(f"data_loader: reading a batch failed ({type(exc).__name__}: {reason[:200]}); check the data (or the loader's arguments)") from None


def each_batch(batches: Iterable[Any]) -> Iterator[Any]:
    """``batches``, read through :func:`next_batch`."""
    iterator = iter(batches)
    while True:
        try:
            yield next_batch(iterator)
        except StopIteration:
            return


def run_model(model: nn.Module | Callable, inputs: Any) -> Any:
    """Call the model: dict inputs as keyword arguments, tuples as positional ones."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


class BatchReader:
    """A data loader's batches as the model takes them: on the device, split, channels-last if asked."""

    def __init__(self, device: torch.device, data_loader: Any = None, target_key: str | None = None, channels_last: bool = False):
        self.device = device
        self.non_blocking = device.type == "cuda"
        self.channels_last = channels_last
        custom = getattr(data_loader, "unpack_batch", None)
        self.plain = not callable(custom)  # (inputs, target) pairs take the short path below
        self.unpack: Callable[[Any], tuple[Any, Any]] = custom if callable(custom) else (lambda batch: unpack_batch(batch, target_key))
        counter = getattr(data_loader, "batch_samples", None)
        self.counter: Callable[[Any, Any], int] | None = counter if callable(counter) else None

    def __call__(self, batch: Any) -> tuple[Any, Any]:
        if self.plain and type(batch) in (list, tuple) and len(batch) == 2:  # the common case, a few us less per step
            inputs, target = batch
            if type(inputs) is torch.Tensor and type(target) is torch.Tensor and inputs.device == self.device == target.device:
                return self._layout(inputs), target
        inputs, target = self.unpack(to_device(batch, self.device, self.non_blocking))
        return self._layout(inputs), target

    def count(self, inputs: Any, target: Any) -> int:
        """The batch's number of samples (:func:`count_samples`, or the data loader's ``batch_samples``)."""
        if self.counter is not None:
            size = self.counter(inputs, target)
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise UserError(f"data_loader: batch_samples returned {size!r}; it must return the batch's number of samples, an int")
            return size
        if type(inputs) is torch.Tensor and type(target) is torch.Tensor and inputs.dim() and target.dim():
            size = inputs.shape[0]
            if target.shape[0] == size:  # the common case, two tensors that agree
                return size
        return count_samples(inputs, target)

    def inputs_only(self, batch: Any) -> Any:
        """A batch of model inputs with no target (unlabelled data for predictions)."""
        return self._layout(to_device(batch, self.device, self.non_blocking))

    def _layout(self, inputs: Any) -> Any:
        if self.channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs
