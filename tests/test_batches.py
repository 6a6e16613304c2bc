"""How a batch reaches the model: moved to the device with its structure kept, then unpacked."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from trainer.evaluator import Evaluator, to_device
from utils.errors import UserError

CPU = torch.device("cpu")


def test_to_device_keeps_the_batch_structure_and_leaves_tensors_already_there():
    Pair = namedtuple("Pair", "inputs target")
    x, y = torch.ones(2, 3), torch.tensor([0, 1])
    moved = to_device({"pair": Pair(x, y), "list": [x, "name"], "n": 3}, CPU)
    assert type(moved["pair"]) is Pair and moved["pair"].inputs is x and moved["pair"].target is y
    assert moved["list"][0] is x and moved["list"][1] == "name" and moved["n"] == 3
    as_double = to_device((x,), torch.device("cpu"))
    assert type(as_double) is tuple and as_double[0] is x


def test_unpack_batch_rules():
    x, y = torch.ones(2, 3), torch.tensor([0, 1])
    assert Evaluator.unpack_batch([x, y]) == (x, y)
    inputs, target = Evaluator.unpack_batch((x, x, y))
    assert inputs == (x, x) and target is y
    inputs, target = Evaluator.unpack_batch({"text": x, "label": y})
    assert inputs == {"text": x} and target is y
    with pytest.raises(UserError, match="target under one of"):
        Evaluator.unpack_batch({"text": x})
