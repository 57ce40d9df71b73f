"""Expert importance, rankings and the routing-divergence metric (pure functions on tensors)."""

from __future__ import annotations

import torch

from moe_specialists.models.plan import Ranking
from moe_specialists.pruning.stats import GroupStats

RANKINGS: tuple[str, ...] = ("routing-mass", "reap", "frequency", "random")


def importance(stats: GroupStats, ranking: Ranking, seed: int = 0) -> torch.Tensor:
    """Per-layer expert scores [L, E], higher = more important.

    routing-mass: mean_x q_l(x)[e] = mass_sum / num_sequences
    frequency:    share of tokens selecting e = select / num_tokens
    reap:         mean over tokens selecting e of w[t,e] * ||f_e(h_t)|| = reap_sum / select (0 if never)
    random:       uniform noise from ``seed`` (a control)
    """
    if ranking == "routing-mass":
        return stats.mass_sum / max(stats.num_sequences, 1)
    if ranking == "frequency":
        return stats.select / max(stats.num_tokens, 1)
    if ranking == "reap":
        if not torch.any(stats.reap_sum):
            raise ValueError(
                "these statistics have no REAP scores; calibrate with the transformers collector "
                "and --reap, or rank by routing-mass / frequency"
            )
        return torch.where(stats.select > 0, stats.reap_sum / stats.select.clamp_min(1), 0.0)
    if ranking == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(stats.mass_sum.shape, generator=g, dtype=torch.float64)
    raise ValueError(f"unknown ranking {ranking!r}; choose one of {RANKINGS}")


def keep_top(scores: torch.Tensor, count: int, invert: bool = False) -> list[int]:
    """Original indices of the ``count`` highest-scoring experts of one layer, ascending. Ties break toward the
    lower index. ``invert`` (control): keep the lowest-scoring instead, i.e. drop the most important."""
    order = sorted(range(len(scores)), key=lambda e: (-float(scores[e]), e))
    if invert:
        order = order[::-1]
    return sorted(order[:count])


def jsd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits (in [0, 1]) along the last axis:
    JSD = H(m) - (H(p) + H(q)) / 2, m = (p + q) / 2, with 0 log 0 = 0."""

    def entropy(x: torch.Tensor) -> torch.Tensor:
        return -torch.where(x > 0, x * torch.log2(x.clamp_min(1e-300)), 0.0).sum(-1)

    p, q = p.double(), q.double()
    return (entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2).clamp_min(0.0)


def routing_divergence(passages: dict[str, torch.Tensor], languages: list[str], pivot: str = "en") -> torch.Tensor:
    """D_l = mean over languages L of mean over parallel passages x of JSD(q_l(x in L), q_l(x in pivot)). [L]"""
    missing = [lang for lang in [pivot, *languages] if lang not in passages]
    if missing:
        raise ValueError(
            f"no per-passage routing for {missing}; have {sorted(passages)}. "
            "Calibrate with passages for these languages (the default)."
        )
    per_lang = []
    for lang in languages:
        a, b = passages[lang], passages[pivot]
        if a.shape != b.shape:
            raise ValueError(
                f"passages of {lang!r} and {pivot!r} are not parallel: {tuple(a.shape)} vs {tuple(b.shape)}"
            )
        per_lang.append(jsd(a, b).mean(0))  # [N, L] -> [L]
    return torch.stack(per_lang).mean(0)
