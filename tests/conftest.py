"""pytest set-up shared by every test module (helpers live in ``tests/helpers.py``)."""

from __future__ import annotations

import random

import pytest
import torch
from fixtures import trust_for_tests
from helpers import ROOT, seeded_random

# Tiny models gain nothing from more threads, and OpenMP threads spinning against other test
# processes on CI's 2 cores make in-process runs many times slower.
torch.set_num_threads(1)
# The engine tests' fixtures (tests/fixtures) may be named by a checkpoint's config in this process,
# as the project's own packages may: the rule users get is unchanged (see fixtures.trust_for_tests).
trust_for_tests()


@pytest.fixture
def root():
    return ROOT


@pytest.fixture
def rng(request) -> random.Random:
    """Seeded randomness for tests that pick random moments; the seed is printed (see helpers.seeded_random)."""
    return seeded_random(request)
