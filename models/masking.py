"""A plan evaluated on its parent without slicing: the dropped experts are masked out of the routers in memory.

For the families we prune (every one renormalises its top-k weights: ``FamilyAdapter.check_prunable``), a
layer that keeps the experts K routes a token exactly as the sliced specialist does when its router logits l
are masked, l_e = -inf for e not in K:

    indices = top-k of l over K,    weights_i = exp(l_i) / sum_{j in indices} exp(l_j)

(Qwen3: a softmax over the kept experts, top-k, renormalised; GPT-OSS: top-k of the logits, softmax over them:
the same numbers). The experts stay in memory under their original indices, so one loaded parent evaluates any
number of plans: the search's candidates cost a generation each, not a slice and a load.
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


def _masking_hook(allowed: torch.Tensor, top_k: int):
    def hook(module: nn.Module, args: Any, out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return masked_routing(out[0], allowed, top_k)

    return hook
