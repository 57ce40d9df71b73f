"""The search's arithmetic by hand: plan bytes, bisection bounds and the candidates it tries, byte budgets."""

from __future__ import annotations

import pytest

from moe_specialists.pruning.budget import (
    bisection_calls,
    check_budget,
    largest_true,
    largest_within_bytes,
    plan_bytes,
    search_calls,
    smallest_bytes,
    smallest_within,
)


def test_plan_bytes_by_hand():
    assert plan_bytes(1000, [10, 20], [3, 4]) == 1000 + 30 + 80
    assert smallest_bytes(1000, [10, 20], top_k=2) == 1000 + 20 + 40
    with pytest.raises(ValueError, match="3 layer counts for 2 MoE layers"):
        plan_bytes(0, [1, 1], [1, 1, 1])


def test_largest_true_finds_the_boundary_within_its_bound():
    for boundary in range(0, 29):
        calls = []
        got = largest_true(0, 28, lambda x, b=boundary, calls=calls: calls.append(x) or x <= b)
        assert got == boundary
        assert 0 not in calls and len(calls) <= bisection_calls(29) == 5  # ceil(log2 29)
    assert largest_true(3, 3, lambda x: pytest.fail("a single candidate is never evaluated")) == 3
    with pytest.raises(ValueError, match="empty range"):
        largest_true(2, 1, bool)


def test_smallest_within_walks_levels_then_totals():
    """8 layers of 32 experts, top-4: levels d = 0..28 (B = 8 * (32 - d)), then totals between two levels."""
    for smallest in (256, 200, 197, 193, 32):  # the smallest kept total within the floor
        calls = []
        got = smallest_within(8, 32, 4, lambda b, s=smallest, calls=calls: calls.append(b) or b >= s)
        assert got == smallest
        assert len(calls) <= search_calls(8, 32, 4) == 5 + 3  # ceil(log2 29) + ceil(log2 8)
        assert 256 not in calls  # the parent is within any floor
    # resolution 4: totals at steps of 4 below the last good level (200, 196), never 197
    assert smallest_within(8, 32, 4, lambda b: b >= 197, resolution=4) == 200
    assert smallest_within(8, 32, 4, lambda b: b >= 197, resolution=8) == 200  # whole levels only
    assert search_calls(8, 32, 4, resolution=8) == 5


def test_a_byte_budget_by_hand():
    """dense 1000 bytes, 2 layers of 8 experts of 10 bytes, top-2: B kept experts weigh 1000 + 10 B."""
    def bytes_of(b):
        return 1000 + 10 * b

    assert largest_within_bytes(2, 8, 2, bytes_of, 1000 + 10 * 11 + 5) == 11
    assert largest_within_bytes(2, 8, 2, bytes_of, 10**9) == 16  # all of it
    assert largest_within_bytes(2, 8, 2, bytes_of, 1040) == 4  # top-k everywhere, just
    check_budget(1040, 1000, 1040)
    with pytest.raises(ValueError, match=r"dense\) weights alone need 0.000 GB .* smallest specialist"):
        check_budget(1039, 1000, 1040)
