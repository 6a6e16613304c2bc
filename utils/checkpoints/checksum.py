"""A checksum of each part of a checkpoint, so a flipped bit is found, not trained on.

torch's zip reader does not check the CRCs its writer stores: two changed bytes in a ``.pth``
load without a word, and ``test.py`` would report metrics of weights nobody trained. Every part
of a checkpoint (the model's weights, the optimizer, each process's state, the config) gets a
CRC-32 of its content when it is saved: the bytes of every tensor with its dtype and shape, and
the text of every other value, walked in order. Loading recomputes it over what was read; a
difference names the part. CRC-32 (zlib's, hardware-accelerated where the CPU has it) is cheap
next to the write itself; the cost on a large model is in ``benchmarks/README.md``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import torch


def checksum(value: Any) -> str:
    """The CRC-32 of ``value``'s content (see the module docstring), as 8 hex digits."""
    crc = 0
    for chunk in _chunks(value):
        crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _chunks(value: Any) -> Iterator[bytes | memoryview]:
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        yield f"T{str(tensor.dtype)}{tuple(tensor.shape)}".encode()
        if tensor.numel():
            flat = tensor.cpu().contiguous().reshape(-1)
            yield memoryview(flat.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        yield b"{"
        for key, item in value.items():
            yield repr(key).encode()
            yield from _chunks(item)
        yield b"}"
    elif isinstance(value, (list, tuple)):
        yield b"[" if isinstance(value, list) else b"("
        for item in value:
            yield from _chunks(item)
        yield b"]"
    else:
        yield repr(value).encode()
