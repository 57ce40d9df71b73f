"""A plan evaluated on its parent inside vLLM, no slicing: ``models.masking`` for vLLM engines.

The parent loads once with the worker extension ``ExpertMasking`` (``worker_extension_cls=MASKING``);
``llm.collective_rpc("mask_experts", args=(kept, constants))`` replaces the router of each listed layer's MoE
runner (vLLM's FusedMoE) in every worker:

* drop (``constants`` None): router logits of the dropped experts set to -inf before vLLM's softmax top-k, so a
  token is routed exactly as by the sliced specialist (the families we prune renormalise their top-k);
* substitute: the parent's routing over all experts, a dropped expert's slot sent to expert 0 with weight 0 and
  answered by its constant through vLLM's zero-expert contract (``vllm_models.SubstitutingRouter``'s maths).

``mask_experts(None)`` restores the parent. The engine must run eager (``enforce_eager``: a compiled graph keeps
the routers it was traced with) and without prefix caching (a cached prefix was computed by another candidate).
Kernels that route by themselves ("monolithic") never call the router: refused.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from vllm.model_executor.layers.fused_moe.config import RoutingMethodType
from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter
from vllm.model_executor.layers.fused_moe.router.zero_expert_router import ZeroExpertRouter

from moe_specialists.models.vllm_models import routed_over_all, substitutes_part

MASKING = "moe_specialists.models.vllm_masking.ExpertMasking"
_RUNNER = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.experts$")


class MaskedRouter(BaseRouter):
    """Routes over ``allowed`` [E] experts only: softmax top-k of the masked logits (vLLM's, renormalised)."""

    def __init__(self, inner: Any, allowed: torch.Tensor):
        BaseRouter.__init__(self, top_k=inner.top_k, global_num_experts=inner.global_num_experts)
        self.allowed, self.renormalize = allowed, bool(getattr(inner, "renormalize", True))

    @property
    def routing_method_type(self) -> RoutingMethodType:
        return RoutingMethodType.Unspecified  # a mask no kernel with its own routing knows

    def _compute_routing(self, hidden_states, router_logits, indices_type, *, input_ids=None):
        masked = router_logits.masked_fill(~self.allowed.to(router_logits.device), float("-inf"))
        weights, ids = routed_over_all(masked, self.top_k, self.renormalize)
        return weights, ids.to(indices_type or torch.int32)


class SubstitutedRouter(ZeroExpertRouter):
    """The parent's routing over every expert; a dropped expert e's weight moves to ``constants[e]`` [E, H]
    (rows of kept experts unused), added by vLLM's MoE runner as the zero-expert output."""

    def __init__(self, inner: Any, allowed: torch.Tensor, constants: torch.Tensor):
        BaseRouter.__init__(self, top_k=inner.top_k, global_num_experts=inner.global_num_experts)
        self.allowed, self.constants = allowed, constants
        self.renormalize = bool(getattr(inner, "renormalize", True))
        self._zero_expert_output: torch.Tensor | None = None

    def _compute_routing(self, hidden_states, router_logits, indices_type, *, input_ids=None):
        weights, ids = routed_over_all(router_logits, self.top_k, self.renormalize)
        dropped = ~self.allowed.to(ids.device)[ids]
        constants = self.constants.to(device=router_logits.device, dtype=hidden_states.dtype)
        # the specialist's maths with every row a candidate (kept = 0): the kept experts' weights left out
        self._zero_expert_output = substitutes_part(weights.masked_fill(~dropped, 0.0), ids.long(),
                                                    router_logits.shape[-1], 0, constants)
        return weights.masked_fill(dropped, 0.0), ids.masked_fill(dropped, 0).to(indices_type or torch.int32)


def moe_runners(model: nn.Module) -> dict[int, nn.Module]:
    """Decoder layer -> its MoE runner (vLLM's FusedMoE, the module holding ``router``)."""
    return {int(m.group(1)): module for name, module in model.named_modules()
            if (m := _RUNNER.search(name)) and hasattr(module, "router")}


def mask_model(
    model: nn.Module, kept: dict[int, list[int]] | None, constants: dict[int, torch.Tensor] | None = None
) -> int:
    """Route every layer of ``kept`` (decoder layer -> original expert ids) over its kept experts (``constants``
    [E, H] per layer: substitute the others), every other layer as the parent; ``kept`` None: the parent
    everywhere. Returns how many layers are masked."""
    runners = moe_runners(model)
    for runner in runners.values():
        if not hasattr(runner, "parent_router"):
            runner.parent_router = runner.router
        runner.router = runner.parent_router
    if not kept:
        return 0
    for key, ids in kept.items():
        layer = int(key)
        runner = runners.get(layer)
        if runner is None:
            raise ValueError(f"layer {layer} has no MoE block in this model (MoE layers: {sorted(runners)})")
        if runner.routed_experts.quant_method.is_monolithic:
            raise ValueError(f"this model's MoE kernel ({type(runner.routed_experts.quant_method).__name__}) routes "
                             "by itself, so its experts cannot be masked in vLLM: judge candidates in transformers")
        inner = runner.parent_router
        allowed = torch.zeros(inner.global_num_experts, dtype=torch.bool)
        allowed[ids] = True
        runner.router = (MaskedRouter(inner, allowed) if constants is None
                         else SubstitutedRouter(inner, allowed, from_wire(constants[key])))
    return len(kept)


def to_wire(t: torch.Tensor) -> tuple[list[int], bytes]:
    """A float32 tensor as (shape, bytes): what an RPC to vLLM's worker processes carries intact."""
    return list(t.shape), t.detach().to(torch.float32).contiguous().numpy().tobytes()


def from_wire(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    shape, raw = x
    return torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape)


class ExpertMasking:
    """Mixed into vLLM's worker class: ``self.model_runner`` is the worker's."""

    def mask_experts(self, kept: dict[int, list[int]] | None, constants: dict[int, torch.Tensor] | None = None) -> int:
        return mask_model(self.model_runner.get_model(), kept, constants)  # type: ignore[attr-defined]


@contextlib.contextmanager
def experts_masked_in_vllm(
    llm: Any, kept: dict[int, list[int]] | None, constants: dict[int, torch.Tensor] | None = None
) -> Iterator[None]:
    """Within the block, ``llm`` (an engine started with ``worker_extension_cls=MASKING``) computes the plan of
    ``kept`` (and ``constants``) on its parent; the parent again after it."""
    wire = None if constants is None else {layer: to_wire(t) for layer, t in constants.items()}
    llm.collective_rpc("mask_experts", args=(kept, wire))
    try:
        yield
    finally:
        llm.collective_rpc("mask_experts", args=(None, None))
