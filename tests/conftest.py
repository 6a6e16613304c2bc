"""pytest set-up shared by every test module (helpers live in ``tests/helpers.py``)."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import ROOT, seeded_random

# Tiny models gain nothing from more threads, and OpenMP threads spinning against other test
# processes on CI's 2 cores make in-process runs many times slower.
torch.set_num_threads(1)


@pytest.fixture
def root():
    return ROOT


@pytest.fixture
def rng(request) -> random.Random:
    """Seeded randomness for tests that pick random moments; the seed is printed (see helpers.seeded_random)."""
    return seeded_random(request)
