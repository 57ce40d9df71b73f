"""A plan evaluated on its parent without slicing: the dropped experts are masked out of the routers in memory.

For the families we prune (every one renormalises its top-k weights: ``FamilyAdapter.check_prunable``), a
layer that keeps the experts K routes a token exactly as the sliced specialist does when its router logits l
are masked, l_e = -inf for e not in K:

    indices = top-k of l over K,    weights_i = exp(l_i) / sum_{j in indices} exp(l_j)

(Qwen3: a softmax over the kept experts, top-k, renormalised; GPT-OSS: top-k of the logits, softmax over them:
the same numbers). The experts stay in memory under their original indices, so one loaded parent evaluates any
number of plans: the search's candidates cost a generation each, not a slice and a load.

Substitution (MoNE: a dropped expert answered by a constant) keeps the router's full width instead: a token is
routed over all E experts as in the parent, the kept ones are computed, and each dropped one it selects adds
its routing weight times that expert's constant c_e (its mean output on calibration data, ``pruning.stats``):

    y_t = sum_{j: e_j in K} w_tj f_{e_j}(h_t) + sum_{j: e_j not in K} w_tj c_{e_j}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from moe_specialists.models.adapters import FamilyAdapter


def masked_routing(
    logits: torch.Tensor, allowed: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masked logits, top-k weights, top-k indices) of router logits [T, E] routed over ``allowed`` [E] only;
    the weights are the softmax of the chosen logits (module docstring), in the logits' dtype."""
    masked = logits.masked_fill(~allowed, float("-inf"))
    top, indices = torch.topk(masked, top_k, dim=-1)
    weights = torch.softmax(top, dim=-1, dtype=torch.float).to(logits.dtype)
    return masked, weights, indices


@contextlib.contextmanager
def experts_masked(model: nn.Module, adapter: FamilyAdapter, kept_by_layer: dict[int, list[int]]) -> Iterator[None]:
    """Within the block, ``model`` routes every MoE layer of ``kept_by_layer`` (decoder index -> original expert
    ids) over its kept experts only: a forward hook replaces the router's (logits, weights, indices), the
    output of every family transformers ships."""
    handles = []
    try:
        for layer, kept in kept_by_layer.items():
            router = adapter.router(model, layer)
            allowed = torch.zeros(router.weight.shape[0], dtype=torch.bool, device=router.weight.device)
            allowed[kept] = True
            handles.append(router.register_forward_hook(_masking_hook(allowed, router.top_k)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def substituted_routing(
    weights: torch.Tensor, indices: torch.Tensor, allowed: torch.Tensor, constants: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights of the kept experts only [T, k], the dropped experts' part sum_j w_tj c_{e_j} [T, H]) of a
    routing ``weights``/``indices`` [T, k] over all experts; ``constants`` [E, H] (rows of kept experts unused)."""
    dropped = ~allowed[indices]
    part = ((weights * dropped).unsqueeze(-1).float() * constants.float()[indices]).sum(1)
    return weights.masked_fill(dropped, 0), part


@contextlib.contextmanager
def experts_substituted(
    model: nn.Module, adapter: FamilyAdapter, kept_by_layer: dict[int, list[int]], constants: dict[int, torch.Tensor]
) -> Iterator[None]:
    """Within the block, every MoE layer of ``kept_by_layer`` routes over all its experts, computes the kept
    ones and answers each dropped one by its row of ``constants[layer]`` [E, H] (module docstring): a hook on
    the router zeroes the dropped weights and keeps their part, a hook on the experts adds it."""
    handles = []
    try:
        for layer, kept in kept_by_layer.items():
            router, experts = adapter.router(model, layer), adapter.experts(model, layer)
            allowed = torch.zeros(router.weight.shape[0], dtype=torch.bool, device=router.weight.device)
            allowed[kept] = True
            part: list[torch.Tensor] = []
            c = constants[layer].to(router.weight.device)
            handles.append(router.register_forward_hook(_substituting_hook(allowed, c, part)))
            handles.append(experts.register_forward_hook(lambda m, a, out, part=part: out + part.pop().to(out.dtype)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _substituting_hook(allowed: torch.Tensor, constants: torch.Tensor, part: list[torch.Tensor]):
    def hook(module: nn.Module, args: Any, out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        logits, weights, indices = out[:3]
        kept, extra = substituted_routing(weights, indices, allowed, constants)
        part.append(extra)
        return logits, kept, indices

    return hook


def _masking_hook(allowed: torch.Tensor, top_k: int):
    def hook(module: nn.Module, args: Any, out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return masked_routing(out[0], allowed, top_k)

    return hook
