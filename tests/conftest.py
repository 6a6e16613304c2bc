"""pytest set-up shared by every test module (helpers live in ``tests/helpers.py``)."""

from __future__ import annotations

import random

import pytest
import torch
from fixtures import trust_for_tests
from helpers import IN_TEMPLATE, OF_THE_PROJECT, ROOT, USER_CODE, seeded_random

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
    "test_streams.py",
    "test_slurm.py",
    "test_bad_inputs.py",
    "test_distributed.py",
    "test_new_project.py",
    "test_fsdp.py",
    "test_sweeps.py",
    "test_hardening.py",
    "test_preemption.py",
    "test_cv.py",
    "test_trackers.py",
    "test_auto_resume.py",
    "test_checkpoint.py",
    "test_predict.py",
    "test_optimizers.py",
    "test_metrics.py",
)
"""The longest modules, longest first (``--durations=0`` summed per module, 2026-12-07: 64 s down to
11 s). With ``--dist loadscope --no-loadscope-reorder`` (the Makefile) pytest-xdist hands out whole
modules in collection order, so this is longest-processing-time-first scheduling: the short modules
fill in at the end instead of a long one starting last and running alone. xdist's default reorders
modules by their number of tests instead, which put Slurm and the new-project tests last: the same
tree took 306.7 s that way and 280.6 s this way, one run after the other on this 2-core machine."""


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = item.path.name
        return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: the order inside each module, and of the other modules, is kept


NAMED_FROM_THE_PROJECT: list[str] = []


@pytest.fixture(autouse=True)
def engine_tests_name_none_of_the_projects_code(request):
    """An engine test that resolves a short config name to the project's ``model/`` or ``data_loader/``
    (``"accuracy"``, ``"DigitsCNN"``) fails: it would break in a copy whose user replaced the example.
    Name the fixtures instead (``fixtures.metric:accuracy``; ``tests/fixtures``). Tests of the
    examples (``tests/examples``) and of every experiment (``helpers.OF_THE_PROJECT``) may; in a
    project made from the template it is off (the engine's tests arrive checked, and a test the user
    adds beside them may name the user's own code)."""
    path = request.node.path
    if "examples" in path.parts or path.name in OF_THE_PROJECT or not IN_TEMPLATE:  # in a project made from the template, tests the user adds may name their code
        yield
        return
    from app.config import names

    found = names._lookup

    def lookup(key: str, name: str, source: str):
        target = found(key, name, source)
        if getattr(target, "__module__", "").split(".")[0] in USER_CODE:
            NAMED_FROM_THE_PROJECT.append(f"{key}: {name!r} is {target.__module__}.{target.__qualname__}")
        return target

    names._lookup = lookup
    NAMED_FROM_THE_PROJECT.clear()
    try:
        yield
    finally:
        names._lookup = found
    if NAMED_FROM_THE_PROJECT:
        pytest.fail(
            f"this engine test names the project's own code ({'; '.join(sorted(set(NAMED_FROM_THE_PROJECT)))}): "
            "a copy whose user replaced the example breaks; name tests/fixtures' classes (fixtures.model:TinyCNN, fixtures.metric:accuracy)"
        )
