"""The shipped metrics against their textbook definitions."""

from __future__ import annotations

import torch

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
