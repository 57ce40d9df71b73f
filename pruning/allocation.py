"""How many experts each MoE layer keeps (paper section 4.2, appendix B). Pure functions.

N MoE layers of E experts, top-k = k, average drop d: the budget is B = N * (E - d) kept experts (or any B in
[N*k, N*E], for counts finer than whole drop levels).
  uniform:          c_l = E - d
  dynamic:          c_l = k + share of R = B - N*k proportional to D_l, capped at E (overflow re-spread),
                    then Hamilton rounding so that sum c_l = B and k <= c_l <= E
  inverse-dynamic:  the same with weights 1 / D_l (a control)
"""

from __future__ import annotations

from moe_specialists.models.plan import Allocation
from moe_specialists.models.rounding import hamilton_round

ALLOCATIONS: tuple[str, ...] = ("uniform", "dynamic", "inverse-dynamic")


def check_drop(drop: int, num_experts: int, top_k: int) -> None:
    """0 <= d <= E - k: every layer must keep at least top-k experts on average."""
    if not isinstance(drop, int) or not 0 <= drop <= num_experts - top_k:
        raise ValueError(
            f"cannot drop {drop} of {num_experts} experts per layer with top-k={top_k}: "
            f"choose an integer drop from 0 to {num_experts - top_k} (each layer keeps at least top-k)"
        )


def capped_proportional(weights: list[float], budget: float, low: float, high: float) -> list[float]:
    """Real capacities: start every layer at ``low``; spread R = budget - N*low over the non-full layers in
    proportion to their weights; cap at ``high`` and hand the overflow back to R; repeat until R is spent.
    Layers whose weights are all 0 share what is left equally."""
    n = len(weights)
    assert n * low <= budget + 1e-9 <= n * high + 1e-9, (n, low, high, budget)
    caps = [float(low)] * n
    remaining = budget - n * low
    active = [i for i in range(n)]
    while remaining > 1e-12 and active:
        total = sum(weights[i] for i in active)
        shares = {i: (weights[i] / total if total > 0 else 1 / len(active)) for i in active}
        overflow = 0.0
        for i in active:
            caps[i] += remaining * shares[i]
            if caps[i] > high:
                overflow += caps[i] - high
                caps[i] = high
        remaining = overflow
        active = [i for i in active if caps[i] < high]
    return caps


def allocate(
    num_layers: int,
    num_experts: int,
    top_k: int,
    drop: int,
    method: Allocation = "dynamic",
    divergence: list[float] | None = None,
    kept_total: int | None = None,
) -> list[int]:
    """Experts kept per MoE layer; sum = B = N * (E - d), or ``kept_total`` (finer than whole drop levels:
    N*k <= B <= N*E), each in [k, E]."""
    check_drop(drop, num_experts, top_k)
    budget = num_layers * (num_experts - drop) if kept_total is None else kept_total
    check_kept_total(budget, num_layers, num_experts, top_k)
    if method not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {method!r}; choose one of {ALLOCATIONS}")
    weights = [1.0] * num_layers
    if method != "uniform":
        if divergence is None or len(divergence) != num_layers:
            raise ValueError(f"{method} allocation needs one routing divergence per MoE layer ({num_layers})")
        if any(d > 0 for d in divergence):  # else no layer is language-specific: nothing to weight by
            inverse = method == "inverse-dynamic"
            weights = [1.0 / max(d, 1e-12) if inverse else max(d, 0.0) for d in divergence]
    real = capped_proportional(weights, budget, top_k, num_experts)
    counts = hamilton_round(real, budget)
    assert sum(counts) == budget and all(top_k <= c <= num_experts for c in counts), counts
    return counts


def check_kept_total(kept_total: int, num_layers: int, num_experts: int, top_k: int) -> None:
    """N*k <= B <= N*E: every layer keeps between top-k and all of its experts."""
    if not num_layers * top_k <= kept_total <= num_layers * num_experts:
        raise ValueError(
            f"cannot keep {kept_total} experts in total over {num_layers} MoE layers of {num_experts} with "
            f"top-k={top_k}: choose from {num_layers * top_k} to {num_layers * num_experts}"
        )


def check_counts(counts: list[int], num_layers: int, num_experts: int, top_k: int, kept_total: int) -> list[int]:
    """Explicit experts per layer (a refined allocation): one per MoE layer, each in [k, E], summing to B."""
    if len(counts) != num_layers:
        raise ValueError(f"{len(counts)} kept counts for {num_layers} MoE layers: give one per layer")
    if bad := [(slot, c) for slot, c in enumerate(counts) if not top_k <= c <= num_experts]:
        raise ValueError(f"kept counts {bad} (MoE layer, count) outside [{top_k}, {num_experts}]: each layer keeps "
                         f"between top-k and all of its experts")
    if sum(counts) != kept_total:
        raise ValueError(f"kept counts sum to {sum(counts)}, the recipe's kept total is {kept_total}")
    return list(counts)
