"""Metrics, found by name from ``metrics`` entries (then torchmetrics' classes).

Two kinds (``trainer/metrics.py`` runs both on the device, on groups of up to 64 batches joined
along the batch dimension):

- **functions** ``fn(output, target) -> 0-dim tensor``: the mean over the batch's samples of a
  per-sample quantity. The epoch value is the sample-weighted mean of the batch values, which
  is the mean over all samples (up to the float rounding of each group's mean). They return
  tensors, never Python numbers, so the sums stay on the device.
- **metric objects** with ``update(output, target)``, ``compute()`` and ``reset()``, such as
  torchmetrics' classes or :class:`Accuracy` below: they keep counts, so the epoch value is
  exact and independent of how the samples were batched or sharded. ``compute()`` reduces over
  DDP processes (torchmetrics does it inside; :class:`Accuracy` shows how by hand), and
  ``state_dict``/``load_state_dict`` carry a mid-epoch state through a checkpoint.

This module imports no torchmetrics: a run whose metrics are these does not pay its import
(seconds, with torchvision and SciPy); a torchmetrics class named in the config is imported then.
"""

import torch

from utils import distributed


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


class Accuracy:
    """Accuracy from exact counts: correct predictions over samples, divided once, in float64.

    The same value for any batch size and any number of processes (the counts are summed over DDP
    processes in :meth:`compute`, a collective every process calls), equal to ``correct / samples``
    computed from a predictions file.
    """

    def __init__(self) -> None:
        self.counts = torch.zeros(2, dtype=torch.int64)  # correct, samples

    def to(self, device: torch.device) -> "Accuracy":
        self.counts = self.counts.to(device)
        return self

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.counts[0] += (output.argmax(dim=1) == target).sum()
        self.counts[1] += target.numel()

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Count the batch and return its own accuracy, as torchmetrics' objects do when called."""
        self.update(output, target)
        return (output.argmax(dim=1) == target).double().mean()

    def compute(self) -> torch.Tensor:
        correct, samples = distributed.all_reduce_sum(self.counts.clone()).tolist()
        return torch.tensor(correct / samples if samples else float("nan"), dtype=torch.float64)

    def reset(self) -> None:
        self.counts.zero_()

    def state_dict(self) -> dict:
        return {"counts": self.counts}

    def load_state_dict(self, state: dict) -> None:
        self.counts.copy_(state["counts"])
