"""The search's arithmetic by hand: plan bytes, bisection bounds and the candidates it tries, byte budgets."""

from __future__ import annotations

import pytest

from moe_specialists.pruning.budget import (
    bisection_calls,
    check_budget,
    largest_true,
    largest_within_bytes,
    plan_bytes,
    refinement_order,
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


def test_refinement_order_by_hand():
    """Cost of a layer: the share of its scores held by the experts ranked c - step + 1 .. c (the next dropped)."""
    scores = [[4, 3, 2, 1], [1, 1, 1, 1], [10, 0, 0, 0], [5, 5, 0, 0]]
    counts = [3, 3, 2, 4]
    # step 1: layer 0 gives up its 3rd best (2 of 10 = 0.2), layer 1 its 3rd (1 of 4 = 0.25), layer 2 its 2nd
    # (0 of 10), layer 3 its 4th (0 of 10); top-k 2 leaves layer 2 (2 - 1 < 2) out
    assert refinement_order(scores, counts, top_k=2, step=1) == [3, 0, 1]
    assert refinement_order(scores, counts, top_k=1, step=1) == [2, 3, 0, 1]  # ties: the earlier layer
    # step 2: layer 0 its 2nd and 3rd (5 of 10), layer 1 two (2 of 4: a tie, layer 0 first), layer 3 its 3rd and
    # 4th (0 of 10); layer 2 (2 - 2 < 1) out
    assert refinement_order(scores, counts, top_k=1, step=2) == [3, 0, 1]
    # invert (the control keeps the lowest-scoring): layer 0 gives up its 3rd lowest, 3 of 10
    assert refinement_order([[4, 3, 2, 1]], [3], top_k=1, step=1, invert=True) == [0]
    assert refinement_order([[0, 0], [1, 3]], [2, 2], top_k=1, step=1) == [0, 1]  # all-zero scores: cost 0
    with pytest.raises(ValueError, match="at least one expert"):
        refinement_order(scores, counts, top_k=1, step=0)
    with pytest.raises(ValueError, match="3 layer counts for 4 layers"):
        refinement_order(scores, counts[:3], top_k=1, step=1)
