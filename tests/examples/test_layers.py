"""model/layers.py: the hand-written Linear is nn.Linear, in initialisation, forward, gradients and state_dict."""

from __future__ import annotations

import torch
from helpers import example_or_skip
from torch import nn

example_or_skip("custom layer", "model.layers:Linear")

from model.layers import Linear  # noqa: E402


def test_same_initialisation_as_nn_linear_from_the_same_rng_state():
    torch.manual_seed(123)
    ours = Linear(37, 11)
    torch.manual_seed(123)
    reference = nn.Linear(37, 11)
    assert torch.equal(ours.weight, reference.weight)
    assert torch.equal(ours.bias, reference.bias)
    bound = 1 / 37**0.5
    assert ours.weight.abs().max() <= bound and ours.bias.abs().max() <= bound
    assert ours.weight.abs().max() > 0.9 * bound  # spread over the whole range, not a tiny init


def test_forward_and_gradients_match_nn_linear_with_the_same_weights():
    reference = nn.Linear(5, 3).double()
    ours = Linear(5, 3).double()
    ours.load_state_dict(reference.state_dict())  # same keys and shapes: the layers are interchangeable
    x = torch.randn(4, 2, 5, dtype=torch.float64)  # extra leading dims work like nn.Linear's
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(4, 2, 3, dtype=torch.float64)

    y_ours, y_ref = ours(x_ours), reference(x_ref)
    torch.testing.assert_close(y_ours, y_ref)
    (y_ours * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
    torch.testing.assert_close(ours.bias.grad, reference.bias.grad)
    torch.testing.assert_close(x_ours.grad, x_ref.grad)


def test_without_bias_and_repr():
    ours, reference = Linear(6, 2, bias=False), nn.Linear(6, 2, bias=False)
    assert ours.bias is None and list(ours.state_dict()) == list(reference.state_dict()) == ["weight"]
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(ours(x), reference(x))
    assert repr(Linear(5, 3)) == repr(nn.Linear(5, 3)) == "Linear(in_features=5, out_features=3, bias=True)"
    assert [name for name, _ in Linear(5, 3).named_parameters()] == ["weight", "bias"]
