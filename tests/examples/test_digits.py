"""The digits example's metrics (model/metric.py) against their textbook definitions; they leave with the example."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT

from app.config import Config
from model.metric import accuracy, top_k_acc


def test_top_k_matches_torch_topk_without_ties_and_counts_ties_for_the_target():
    generator = torch.Generator().manual_seed(0)
    output = torch.randn(500, 10, generator=generator)
    target = torch.randint(0, 10, (500,), generator=generator)
    for k in (1, 3, 9, 10, 12):
        top = output.topk(min(k, 10), dim=1).indices
        expected = (top == target.unsqueeze(1)).any(dim=1).float().mean()
        assert torch.equal(top_k_acc(output, target, k), expected), k
    assert torch.equal(top_k_acc(output, target, 1), accuracy(output, target))
    tied = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert top_k_acc(tied, torch.tensor([1, 2]), k=1).item() == 1.0


@pytest.mark.skipif(
    not (ROOT / "new_project.py").exists(), reason="in a project made from the template config.json is yours; configs/digits.yaml keeps the digits example"
)
def test_digits_yaml_is_the_default_experiment():
    assert Config.from_file(ROOT / "configs" / "digits.yaml").to_dict() == Config.from_file(ROOT / "config.json").to_dict()
