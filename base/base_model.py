"""BaseModel: an ``nn.Module`` whose ``forward`` a subclass must write."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

from torch import nn


class BaseModel(nn.Module, metaclass=ABCMeta):
    """Base class for the project's models.

    ``str(model)`` ends with the trainable parameter count, which the run header prints.
    """

    @abstractmethod
    def forward(self, *inputs):
        """The forward pass; return a tensor or a dict that the loss and metrics understand."""

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def __str__(self) -> str:
        trainable, total = self.parameter_counts()
        return f"{super().__str__()}\nTrainable parameters: {trainable:,} of {total:,}"
