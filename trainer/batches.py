"""How a batch reaches the model: moved to the device, split into ``(inputs, target)``, called.

The default rules (:func:`unpack_batch`):

- a tuple or list is ``(inputs, target)``; with more items, ``(*inputs, target)``;
- a dict has its target under ``trainer.target_key`` (default: the first of ``"label"``,
  ``"labels"``, ``"target"``, ``"targets"``, ``"y"``) and every other key is passed to the
  model as a keyword argument;
- the model may return a tensor or a dict: whatever it returns goes to the loss and metrics.

To read your batches another way, give your data loader a method ``unpack_batch(self, batch)``
returning ``(inputs, target)``; the Trainer, ``test.py`` and ``predict.py`` use it instead.
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

    def __call__(self, batch: Any) -> tuple[Any, Any]:
        if self.plain and type(batch) in (list, tuple) and len(batch) == 2:  # the common case, a few us less per step
            inputs, target = batch
            if type(inputs) is torch.Tensor and type(target) is torch.Tensor and inputs.device == self.device == target.device:
                return self._layout(inputs), target
        inputs, target = self.unpack(to_device(batch, self.device, self.non_blocking))
        return self._layout(inputs), target

    def inputs_only(self, batch: Any) -> Any:
        """A batch of model inputs with no target (unlabelled data for predictions)."""
        return self._layout(to_device(batch, self.device, self.non_blocking))

    def _layout(self, inputs: Any) -> Any:
        if self.channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs
