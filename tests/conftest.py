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


LONG_FIRST = (
    "test_slurm.py",
    "test_sweep_hardening.py",
    "test_auto_resume.py",
    "test_streams.py",
    "test_distributed.py",
    "test_fsdp.py",
    "test_hardening.py",
)
"""Modules that mostly wait on real processes (Slurm daemons, torchrun, a database away): with
``--dist loadscope`` pytest-xdist hands out modules in collection order, so these start first and
their waits overlap the rest of the suite instead of adding to its end."""


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = item.path.name
        return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: the order inside each module, and of the other modules, is kept
