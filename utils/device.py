"""Choosing the training device from the config and the torchrun environment."""

from __future__ import annotations

import os
import re

import torch

from utils.errors import UserError


def select_device(name: str, distributed: bool, local_rank: int) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; under torchrun each process takes ``cuda:LOCAL_RANK``."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device: {name!r} requested but CUDA is not available; set device=cpu or device=auto")
        if distributed:
            device = torch.device("cuda", local_rank)
        elif device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device: {name!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(device)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device: {name!r} requested but MPS is not available; set device=cpu or device=auto")
    return device


def limit_visible_gpus(devices: str | None) -> None:
    """``-d 0,1``: expose only those GPUs, before CUDA initialises."""
    if devices is None:
        return
    if not re.fullmatch(r"\d+(,\d+)*", devices.replace(" ", "")):
        raise UserError(f"-d/--device: {devices!r} is not a list of GPU indices; write e.g. -d 0 or -d 0,1")
    os.environ["CUDA_VISIBLE_DEVICES"] = devices.replace(" ", "")
