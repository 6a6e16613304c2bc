"""``${refs}`` are bounded by what they expand to, before it is allocated (issue 34: 22 keys of
``"${previous}${previous}"`` made a 256 MiB string before anything was checked)."""

from __future__ import annotations

import resource

import pytest

from app.config.refs import MAX_EXPANDED, resolve_references
from utils.errors import UserError


def doubling(keys: int, base: str = "x" * 64) -> dict:
    return {"k0": base, **{f"k{i}": f"${{k{i - 1}}}${{k{i - 1}}}" for i in range(1, keys)}}


def test_text_that_doubles_is_refused_at_the_first_key_past_the_bound_without_growing_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserError) as raised:
        resolve_references(doubling(22), "c.json")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    # key i holds 64 * 2**i characters; each is made at its own place and where it is first
    # referenced, so the charges pass 1,000,000 at key 12 (twice 64 * (2**13 - 2)), long before 2**22
    made = sum(2 * 64 * 2**i for i in range(1, 13))
    assert made > MAX_EXPANDED > made - 2 * 64 * 2**12
    assert str(raised.value).startswith("c.json: k12: ${k11} makes the references expand to more than 1,000,000 characters")
    assert grown_kib < 64 * 1024  # far from the 128 MiB string, let alone the copies of it


def test_copies_of_a_list_count_their_values():
    data = {"a": list(range(1_000)), **{f"b{i}": ["${a}"] * 100 for i in range(20)}}
    with pytest.raises(UserError, match=r"b\d+\.\d+: \$\{a\} makes the references expand"):
        resolve_references(data, "c.json")


def test_a_config_within_the_bound_resolves_as_before():
    data = {"n": 3, "name": "run-${n}-${n}", "alias": "${name}", "list": ["${n}", "${alias}"], "literal": "\\${n}", **doubling(10)}
    resolved = resolve_references(data, "c.json")
    assert resolved["name"] == resolved["alias"] == "run-3-3"
    assert resolved["list"] == [3, "run-3-3"] and resolved["literal"] == "${n}"
    assert resolved["k9"] == "x" * 64 * 2**9
