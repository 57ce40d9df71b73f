"""Layer allocation: capped proportional spreading and Hamilton rounding, by hand."""

import pytest

from moe_specialists.pruning.allocation import allocate, capped_proportional, check_counts, check_drop, hamilton_round


def test_hamilton_round_by_hand():
    # floors 2,3,1 = 6; 2 leftover units go to the largest remainders .7 (idx 0) and .6 (idx 2)
    assert hamilton_round([2.7, 3.2, 1.6], 8) == [3, 3, 2]
    assert hamilton_round([2.5, 2.5, 3.0], 8) == [3, 2, 3]  # tie -> lower index
    assert hamilton_round([4.0, 4.0], 8) == [4, 4]


def test_capped_proportional_by_hand():
    # 3 layers, low=2, high=8, budget 15 -> R=9 spread 1:2:6 -> 3, 4, 8 (6+2=8 hits the cap exactly)
    assert capped_proportional([1, 2, 6], 15, 2, 8) == pytest.approx([3, 4, 8])
    # R=12 spread 1:1:10 -> 3.0, 3.0, 12 -> cap 8, overflow 4 split 1:1 -> 5, 5, 8
    assert capped_proportional([1, 1, 10], 18, 2, 8) == pytest.approx([5, 5, 8])


def test_capped_proportional_zero_weights_share_the_rest():
    # layer 2 fills to the cap, the rest is shared equally by the zero-weight layers
    assert capped_proportional([0, 0, 1], 14, 2, 8) == pytest.approx([3, 3, 8])


def test_allocate_dynamic_sums_and_bounds():
    counts = allocate(4, 16, 4, 8, "dynamic", [0.1, 0.2, 0.6, 0.1])
    assert sum(counts) == 4 * 8 and all(4 <= c <= 16 for c in counts)
    # R = 32 - 16 = 16 spread 1:2:6:1 -> 1.6, 3.2, 9.6, 1.6 -> caps 5.6, 7.2, 13.6, 5.6 -> Hamilton
    assert counts == [6, 7, 14, 5]


def test_allocate_inverse_and_uniform_and_all_zero():
    assert allocate(3, 8, 2, 2, "uniform") == [6, 6, 6]
    assert allocate(3, 8, 2, 2, "dynamic", [0.0, 0.0, 0.0]) == [6, 6, 6]  # falls back to uniform
    inv = allocate(2, 8, 2, 4, "inverse-dynamic", [0.1, 0.3])  # weights 10 : 3.33 -> R=4 -> 3 : 1
    assert inv == [5, 3]


@pytest.mark.parametrize("drop", [-1, 13, 2.5])
def test_check_drop_refuses_impossible_levels(drop):
    with pytest.raises(ValueError, match="choose an integer drop from 0 to 12"):
        check_drop(drop, 16, 4)


def test_dynamic_needs_one_divergence_per_layer():
    with pytest.raises(ValueError, match="one routing divergence per MoE layer"):
        allocate(3, 8, 2, 2, "dynamic", [0.1])


def test_check_counts_takes_one_count_per_layer_within_bounds_summing_to_the_total():
    assert check_counts([4, 6, 5], num_layers=3, num_experts=8, top_k=2, kept_total=15) == [4, 6, 5]
    with pytest.raises(ValueError, match="2 kept counts for 3 MoE layers"):
        check_counts([4, 6], 3, 8, 2, 10)
    with pytest.raises(ValueError, match=r"\[\(0, 1\), \(2, 9\)\] \(MoE layer, count\) outside \[2, 8\]"):
        check_counts([1, 6, 9], 3, 8, 2, 16)
    with pytest.raises(ValueError, match="sum to 15, the recipe's kept total is 16"):
        check_counts([4, 6, 5], 3, 8, 2, 16)
