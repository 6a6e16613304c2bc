"""Metrics: ``fn(output, target) -> 0-dim tensor``, the mean over the batch.

They return tensors, never Python numbers, so the Trainer can sum them on the device without a
host sync per batch; it weights each batch by its size, so an epoch value is exact.
"""

import torch


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose highest-scoring class is the target."""
    return (output.argmax(dim=1) == target).float().mean()


def top_k_acc(output: torch.Tensor, target: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Fraction of samples whose target is among the ``k`` highest-scoring classes."""
    top = output.topk(min(k, output.shape[1]), dim=1).indices
    return (top == target.unsqueeze(1)).any(dim=1).float().mean()
