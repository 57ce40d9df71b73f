"""The arithmetic of `search`: bytes of a plan, bisection bounds, the order candidates are tried in. Pure.

A specialist keeping c_l experts in MoE layer l weighs

    bytes(c) = dense + sum_l c_l * b_l

where ``dense`` is every weight that is not an expert (attention, embeddings, norms, routers' share aside) and b_l
the bytes of one expert of layer l as stored (MXFP4 blocks + scales + biases for GPT-OSS, bf16 for Qwen3). The
smallest such model keeps top-k experts per layer.

The quality search assumes the loss against the parent grows with the experts dropped (a monotone predicate
"within the floor" over the kept total B), and finds its boundary in two bisections: over whole drop levels
d in [0, E - k] (B = N * (E - d); d = 0 is the parent, within any floor, never evaluated), then over the totals
between the last level within the floor and the next one, N * (E - d - 1) < B < N * (E - d), at ``resolution``
experts. Each costs at most ceil(log2(number of candidates)) evaluations.

Then the allocation is refined layer by layer (``refinement_order``): from the total found, each layer in turn,
the one whose next experts hold the least of its importance first, is offered ``step`` experts fewer; a change
within the floor is kept. One evaluation per layer tried, at most ``refine`` of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def plan_bytes(dense: int, per_expert: Sequence[int], counts: Sequence[int]) -> int:
    """dense + sum_l c_l * b_l."""
    if len(per_expert) != len(counts):
        raise ValueError(f"{len(counts)} layer counts for {len(per_expert)} MoE layers")
    return dense + sum(c * b for c, b in zip(counts, per_expert, strict=True))


def smallest_bytes(dense: int, per_expert: Sequence[int], top_k: int) -> int:
    """The lightest specialist: top-k experts in every layer."""
    return plan_bytes(dense, per_expert, [top_k] * len(per_expert))


def largest_true(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The largest x in [lo, hi] with ok(x), for ok true up to a boundary and false after it; ok(lo) is taken
    as true and never called. ok is called at most ceil(log2(hi - lo + 1)) times."""
    if lo > hi:
        raise ValueError(f"empty range [{lo}, {hi}]")
    good, bad = lo, hi + 1
    while bad - good > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


def bisection_calls(candidates: int) -> int:
    """Most calls ``largest_true`` makes over ``candidates`` values (the first one free): ceil(log2 n)."""
    return math.ceil(math.log2(candidates)) if candidates > 1 else 0


def smallest_within(
    num_layers: int, num_experts: int, top_k: int, ok: Callable[[int], bool], resolution: int = 1
) -> int:
    """The smallest kept total B whose plan is within the floor (``ok(B)``; the parent, B = N * E, is): whole
    drop levels first, then totals between the last good level and the next at steps of ``resolution``."""
    n, e = num_layers, num_experts
    drop = largest_true(0, e - top_k, lambda d: ok(n * (e - d)))
    if drop == e - top_k or resolution >= n:
        return n * (e - drop)
    top = n * (e - drop)
    steps = largest_true(0, (n - 1) // resolution, lambda j: ok(top - j * resolution))
    return top - steps * resolution


def search_calls(num_layers: int, num_experts: int, top_k: int, resolution: int = 1) -> int:
    """An upper bound on the evaluations of ``smallest_within``."""
    levels = bisection_calls(num_experts - top_k + 1)
    return levels + (bisection_calls((num_layers - 1) // resolution + 1) if resolution < num_layers else 0)


def refinement_order(
    scores: Sequence[Sequence[float]], counts: Sequence[int], top_k: int, step: int, invert: bool = False
) -> list[int]:
    """The MoE layers that can give up ``step`` more experts (c_l - step >= k), cheapest first. A layer's cost is
    the share of its importance those experts hold: the sum of its (c_l - step + 1)-th .. c_l-th highest scores
    (lowest with ``invert``: the ranking the plan keeps by) over the sum of all its scores, 0 when they sum to 0.
    Ties: the earlier layer first."""
    if len(scores) != len(counts):
        raise ValueError(f"{len(counts)} layer counts for {len(scores)} layers of scores")
    if step < 1:
        raise ValueError(f"a refinement step drops at least one expert, got {step}")
    cost = {}
    for slot, (layer, c) in enumerate(zip(scores, counts, strict=True)):
        if c - step >= top_k:
            ranked = sorted(layer, reverse=not invert)
            total = sum(layer)
            cost[slot] = sum(ranked[c - step:c]) / total if total else 0.0
    return sorted(cost, key=lambda slot: (cost[slot], slot))


def largest_within_bytes(
    num_layers: int, num_experts: int, top_k: int, bytes_of: Callable[[int], int], max_bytes: int
) -> int:
    """The largest kept total B with bytes_of(B) <= max_bytes (bytes grow with B); refused when even top-k
    experts per layer do not fit (``check_budget`` says so to a user)."""
    lo, hi = num_layers * top_k, num_layers * num_experts
    if bytes_of(lo) > max_bytes:
        raise ValueError(f"even {lo} experts ({top_k} per layer) need {bytes_of(lo)} bytes > {max_bytes}")
    return largest_true(lo, hi, lambda b: bytes_of(b) <= max_bytes)


def check_budget(max_bytes: int, dense: int, smallest: int) -> None:
    """A byte budget must hold the non-expert weights and top-k experts per layer; say how much they need."""
    if max_bytes < smallest:
        raise ValueError(
            f"a budget of {max_bytes / 1e9:.3f} GB cannot hold this model: its non-expert (dense) weights alone "
            f"need {dense / 1e9:.3f} GB and the smallest specialist (top-k experts per layer) "
            f"{smallest / 1e9:.3f} GB; ask for at least that"
        )
