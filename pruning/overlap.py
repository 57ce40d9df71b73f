"""Overlap of the expert sets kept for different languages (pure functions): pooled IoU, its expectation for
random sets of the same sizes, and the excess over that expectation."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pooled_iou(kept: Sequence[Sequence[Sequence[int]]]) -> float:
    """IoU of the kept-expert sets of several specialists (of the same base), pooled over layers: the kept set
    of specialist i is {(l, e): e kept in layer l}, so
        IoU = sum_l |A_1l ∩ ... ∩ A_nl| / sum_l |A_1l ∪ ... ∪ A_nl|.
    ``kept[i][l]`` lists the experts specialist i keeps in MoE layer l. Two specialists: the pairwise IoU."""
    assert len(kept) >= 2 and len({len(k) for k in kept}) == 1, "same number of layers in every specialist"
    inter = union = 0
    for layer in zip(*kept, strict=True):
        sets = [set(s) for s in layer]
        inter += len(set.intersection(*sets))
        union += len(set.union(*sets))
    return inter / union if union else 1.0


def expected_iou(sizes: Sequence[Sequence[int]], num_experts: int | Sequence[int]) -> float:
    """Random-expected value of ``pooled_iou`` for the same per-layer counts: specialist i keeps a uniformly
    random subset of size a_il of the E_l experts of layer l, independently across specialists and layers.
    Each expert is in set i with probability a_il / E_l, so exactly
        E|∩_l| = E_l * prod_i (a_il / E_l)          (two sets: a*b/E)
        E|∪_l| = E_l * (1 - prod_i (1 - a_il / E_l))  (two sets: a + b - a*b/E)
    and the returned value is the RATIO OF EXPECTATIONS sum_l E|∩_l| / sum_l E|∪_l| (as pooled_iou is a ratio
    of sums over layers, this is within O(1/layers) of the expectation of the ratio; ``expected_pair_iou``
    gives the exact expectation for one layer). ``sizes[i][l]`` = a_il."""
    layers = len(sizes[0])
    counts = [num_experts] * layers if isinstance(num_experts, int) else list(num_experts)
    e_inter = e_union = 0.0
    for l_, full in enumerate(counts):
        p = [s[l_] / full for s in sizes]
        e_inter += full * math.prod(p)
        e_union += full * (1 - math.prod(1 - x for x in p))
    return e_inter / e_union if e_union else 1.0


def expected_pair_iou(a: int, b: int, num_experts: int) -> float:
    """Exact E[|A∩B| / |A∪B|] for independent uniformly random subsets A, B of sizes a, b of E experts:
    |A∩B| = i is hypergeometric, P(i) = C(a, i) C(E-a, b-i) / C(E, b), and |A∪B| = a + b - i."""
    total = math.comb(num_experts, b)
    return sum(
        math.comb(a, i) * math.comb(num_experts - a, b - i) / total * (i / (a + b - i) if a + b - i else 1.0)
        for i in range(max(0, a + b - num_experts), min(a, b) + 1)
    )


def excess_iou(observed: float, expected: float) -> float:
    """(observed - random) / (1 - random): 0 = no more overlap than chance, 1 = identical sets."""
    return (observed - expected) / (1 - expected) if expected < 1 else 0.0


# --- configuration --------------------------------------------------------------------------------------------
