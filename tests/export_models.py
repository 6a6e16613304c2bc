"""Models that stand in for a user's code in the export tests (``tests/test_export.py``, ``test_bad_inputs.py``)."""

from __future__ import annotations

import torch
from fixtures.model import TinyCNN
from torch import nn


class BranchyCNN(TinyCNN):
    """The engine tests' CNN (same weights) with a branch on a tensor's value: torch.export cannot trace it."""

    def forward(self, x):
        if x.mean() > 0:  # EXPORT: data-dependent
            x = x * 1.0
        return super().forward(x)


class TwoHeads(nn.Module):
    """Keyword inputs and a dict output holding a tuple: the names an export gives nested values."""

    def __init__(self):
        super().__init__()
        self.features = nn.Linear(3, 4)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> dict:
        hidden = self.features(image) + extra
        return {"score": hidden.sum(-1), "parts": (hidden, hidden.relu())}
