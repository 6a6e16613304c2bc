"""A real model that sends its own process a real signal at a chosen training batch.

Tests use it to interrupt a run at an exact, randomly chosen point without timing races:
``SIGNAL_AT_BATCH=N`` (1-based count of training forward passes in this process; the pre-flight
check's forward pass is the first, so training batch ``k`` is pass ``k + 1``) and
``SIGNAL_NAME=SIGTERM|SIGINT|SIGKILL``; with ``SIGNAL_RANK`` only that torchrun rank signals.
``SIGNAL_COUNT=process`` counts the passes of every model this process builds (a cross-validation
builds one per fold), so a signal can land inside a later fold. ``SIGNAL_ATTEMPT=N`` signals only
in torchrun's N-th restart of the workers (``TORCHELASTIC_RESTART_COUNT``), so a restarted worker
does not kill itself again.
Without the variables it is exactly ``fixtures.model.TinyCNN``; counting consumes no random numbers.
"""

import os
import signal
import time

from fixtures.data import tiny_dataset
from fixtures.metric import nll_loss
from fixtures.model import TinyCNN
from torch.utils.data import Dataset

from base import BaseDataLoader


class SignalingDigitsCNN(TinyCNN):
    def __init__(self, num_classes: int = 10, dropout: float = 0.25):
        super().__init__(num_classes, dropout)
        self.calls = 0
        self.at = int(os.environ.get("SIGNAL_AT_BATCH", 0))
        rank = os.environ.get("SIGNAL_RANK")
        if rank is not None and rank != os.environ.get("RANK", "0"):
            self.at = 0
        attempt = os.environ.get("SIGNAL_ATTEMPT")
        if attempt is not None and attempt != os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"):
            self.at = 0

    passes_in_process = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            SignalingDigitsCNN.passes_in_process += 1
            count = SignalingDigitsCNN.passes_in_process if os.environ.get("SIGNAL_COUNT") == "process" else self.calls
            if count == self.at:
                os.kill(os.getpid(), getattr(signal, os.environ.get("SIGNAL_NAME", "SIGTERM")))
        return super().forward(x)


class NanLossAfter:
    """``nll_loss`` that turns NaN from the ``at``-th training call on (a real non-finite loss; the
    pre-flight check's call is the first)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, output, target):
        loss = nll_loss(output, target)
        if output.requires_grad:
            self.calls += 1
            if self.calls >= self.at:
                return loss * float("nan")
        return loss


class SleepyDigitsDataLoader(BaseDataLoader):
    """The digits, with a Dataset that sleeps ``delay`` seconds per sample (a slow disk or decoder)."""

    def __init__(self, batch_size: int = 64, delay: float = 0.002, validation_split: int | float = 0.15):
        super().__init__(SleepyDataset(tiny_dataset(training=True), delay), batch_size, validation_split=validation_split)


class SleepyDataset(Dataset):
    def __init__(self, dataset: Dataset, delay: float):
        self.dataset, self.delay = dataset, delay

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        time.sleep(self.delay)
        return self.dataset[index]
