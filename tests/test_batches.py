"""How a batch reaches the model: moved to the device with its structure kept, then unpacked."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from trainer.batches import to_device, unpack_batch
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
    assert unpack_batch([x, y]) == (x, y)
    inputs, target = unpack_batch((x, x, y))
    assert inputs == (x, x) and target is y
    inputs, target = unpack_batch({"text": x, "label": y})
    assert inputs == {"text": x} and target is y
    inputs, target = unpack_batch({"Text": x, "Class": y}, target_key="Class")  # the tutorial Dataset's keys
    assert inputs == {"Text": x} and target is y
    with pytest.raises(UserError, match=r"trainer.target_key is 'Class'.*set trainer.target_key"):
        unpack_batch({"Text": x, "label": y}, target_key="Class")
    with pytest.raises(UserError, match=r"none of \['label'.*set trainer.target_key to the key holding the target"):
        unpack_batch({"text": x})
