"""Custom layers written from ``nn.Parameter``: the pattern for any layer ``torch.nn`` does not have.

A custom layer is an ``nn.Module`` that registers its tensors as ``nn.Parameter`` attributes (so
``model.parameters()``, the optimizer, ``.to(device)`` and ``state_dict`` all see them),
initialises them in ``reset_parameters`` and computes its output in ``forward``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Linear(nn.Module):
    """``y = x @ W.T + b``, the same layer as ``nn.Linear`` written out by hand.

    The weight is stored ``(out_features, in_features)`` exactly like ``nn.Linear``, so the two
    share state_dicts and, from the same RNG state, draw the same initial values.

    Args:
        in_features: size of the last input dimension.
        out_features: size of the last output dimension.
        bias: learn an additive bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
        else:
            self.register_parameter("bias", None)  # the name exists (as None), like nn.Linear(bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's scheme: weight and bias uniform in +-1/sqrt(fan_in).

        kaiming_uniform with a=sqrt(5) gives bound = sqrt(6 / ((1 + a^2) * fan_in)) = 1/sqrt(fan_in):
        each output starts with variance independent of the number of inputs.
        """
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.T  # (*, in) @ (in, out) -> (*, out): any number of leading dims
        if self.bias is not None:
            y = y + self.bias  # (out,) broadcasts over the leading dims
        return y

    def extra_repr(self) -> str:
        """What ``print(model)`` shows inside ``Linear(...)``."""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
