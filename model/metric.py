"""Metrics: ``fn(output, target) -> 0-dim tensor``, the mean over samples of a per-sample quantity.

They return tensors, never Python numbers, so the Trainer can sum them on the device without a
host sync. Being means over samples, they may be called on many batches concatenated (the
Trainer does, see ``trainer/epoch_sums.py``) and give the same epoch value as batch by batch.
"""

import torch


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose highest-scoring class is the target."""
    return (output.argmax(dim=1) == target).float().mean()


def top_k_acc(output: torch.Tensor, target: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Fraction of samples whose target is among the ``k`` highest-scoring classes.

    Counted as "fewer than ``k`` classes score higher than the target" (a tie counts for the
    target): the same as ``topk`` without ties, and 4-5x faster than ``topk`` on CPU.
    """
    target_score = output.gather(1, target.unsqueeze(1))
    return ((output > target_score).sum(dim=1) < k).float().mean()
