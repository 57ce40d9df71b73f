"""transformers classes for pruned MoE specialists (per-layer expert counts): Qwen3-MoE and GPT-OSS.

SELF-CONTAINED on purpose (it imports only torch, transformers and safetensors): ``apply`` copies this file into
every specialist folder and config.json's ``auto_map`` names it, so
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` works where moe-specialists is not
installed. Inside the project, ``models.pruned`` registers the same classes with the Auto classes.

Each class is the family's own causal LM with every MoE block rebuilt from a copy of the config whose scalar
expert count is that layer's count (config.json ``num_experts_per_layer[l]``, 0 for dense layers). Nothing
else changes, so transformers' standard loading (on-disk -> fused experts conversion, MXFP4 dequantization)
loads the sliced weights. Loading from a local folder first compares the tensor shapes (safetensors' own reader)
with the per-layer counts and refuses a disagreement, naming the layer, the numbers and the tensor.

Substitution (config.json ``num_substituted_experts_per_layer[l]`` = s_l > 0): the router keeps c_l + s_l rows,
the kept experts' first, and ``mlp.substitutes`` [s_l, H] holds the dropped experts' constants. A token routed
as in the parent to slot j >= c_l adds w_j * substitutes[j - c_l] instead of an expert's output; the experts
module sees that slot as expert 0 with weight 0 (as vLLM's zero experts do), so every experts implementation
works unchanged.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import GptOssConfig, GptOssForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

EXPERTS_PER_LAYER_KEY = "num_experts_per_layer"
SUBSTITUTED_KEY = "num_substituted_experts_per_layer"
_SUBSTITUTES = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.substitutes$")
_ROUTER = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.(?:gate|router)\.(?:weight|bias)$")
_PACKED = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.experts\.(?:gate_up_proj|down_proj)(?:_bias|_blocks|_scales)?$")
_PER_EXPERT = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.experts\.(\d+)\.")


def layer_config(config: Any, count: int) -> Any:
    """A copy of ``config`` whose scalar expert count is ``count``."""
    out = copy.deepcopy(config)
    out.num_local_experts = count
    return out


def expert_counts(config: Any) -> list[int] | None:
    """``num_experts_per_layer`` checked against the config (one entry per decoder layer, each 0 for a dense
    layer or top-k <= count <= ``num_local_experts``), None when the config has none. ``num_local_experts``
    is transformers' own name of the scalar count in both families (Qwen3-MoE maps num_experts to it)."""
    counts = getattr(config, EXPERTS_PER_LAYER_KEY, None)
    if counts is None:
        return None
    counts = [int(c) for c in counts]
    n_layers, k, full = config.num_hidden_layers, config.num_experts_per_tok, config.num_local_experts
    if len(counts) != n_layers:
        raise ValueError(f"{EXPERTS_PER_LAYER_KEY} has {len(counts)} entries, the model has {n_layers} layers")
    for i, c in enumerate(counts):
        if c and not k <= c <= full:
            raise ValueError(
                f"layer {i} keeps {c} experts; each MoE layer needs top-k={k} <= count <= "
                f"{full} (the scalar expert count, the max of {EXPERTS_PER_LAYER_KEY})"
            )
    return counts


def substituted_counts(config: Any) -> list[int]:
    """``num_substituted_experts_per_layer`` checked against the per-layer counts (s_l >= 0, and 0 where a layer
    is dense); all 0 when the config has none."""
    counts = expert_counts(config) or [config.num_local_experts] * config.num_hidden_layers
    subs = getattr(config, SUBSTITUTED_KEY, None)
    if subs is None:
        return [0] * len(counts)
    subs = [int(x) for x in subs]
    if len(subs) != len(counts):
        raise ValueError(f"{SUBSTITUTED_KEY} has {len(subs)} entries, the model has {len(counts)} layers")
    for i, (c, x) in enumerate(zip(counts, subs, strict=True)):
        if x < 0 or (x and not c):
            raise ValueError(f"{SUBSTITUTED_KEY}[{i}] = {x}: a layer substitutes 0 or more experts, a dense layer 0")
    return subs


def _shapes(folder: str) -> dict[str, list[int]]:
    """Tensor name -> shape of a local checkpoint, from safetensors' own reader (no tensor data read)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    shapes: dict[str, list[int]] = {}
    for name in files:
        with safe_open(os.path.join(folder, name), "pt") as f:
            shapes.update({k: list(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118 (not a dict)
    return shapes


def check_tensors(shapes: dict[str, list[int]], config: Any) -> None:
    """Refuse tensors that disagree with ``num_experts_per_layer``: router rows and expert stacks must hold
    c_l experts on dim 0, per-expert tensors must be numbered exactly 0..c_l-1."""
    counts = expert_counts(config) or [config.num_local_experts] * config.num_hidden_layers
    subs = substituted_counts(config)
    seen: dict[int, set[int]] = {}  # layer -> its experts' ids
    with_substitutes: set[int] = set()

    def mismatch(layer: int, what: str) -> ValueError:
        said = f"{EXPERTS_PER_LAYER_KEY}[{layer}] = {counts[layer]}" if layer < len(counts) else "no such layer"
        if layer < len(subs) and subs[layer]:
            said += f", {SUBSTITUTED_KEY}[{layer}] = {subs[layer]}"
        return ValueError(
            f"specialist config and tensors disagree in layer {layer}: config.json {said}, but {what}. "
            "Re-run `apply` or fix config.json."
        )

    for name, shape in shapes.items():
        if m := _ROUTER.search(name):
            layer = int(m.group(1))
            if layer >= len(counts) or shape[0] != counts[layer] + subs[layer]:
                raise mismatch(layer, f"{name} routes over {shape[0]} experts")
        elif m := _PACKED.search(name):
            layer = int(m.group(1))
            if layer >= len(counts) or shape[0] != counts[layer]:
                raise mismatch(layer, f"{name} holds {shape[0]} experts on dim 0")
        elif m := _SUBSTITUTES.search(name):
            layer = int(m.group(1))
            if layer >= len(counts) or shape != [subs[layer], config.hidden_size]:
                raise mismatch(layer, f"{name} has shape {shape} (expected [{subs[min(layer, len(subs) - 1)]}, "
                               f"{config.hidden_size}])")
            with_substitutes.add(layer)
        elif m := _PER_EXPERT.search(name):
            layer, expert = int(m.group(1)), int(m.group(2))
            if layer >= len(counts) or expert >= counts[layer]:
                raise mismatch(layer, f"the checkpoint has an expert numbered {expert} ({name})")
            seen.setdefault(layer, set()).add(expert)
    for layer, ids in sorted(seen.items()):
        if missing := sorted(set(range(counts[layer])) - ids):
            raise mismatch(layer, f"the checkpoint has only {len(ids)} experts (missing ids {missing})")
    for layer, x in enumerate(subs):
        if x and layer not in with_substitutes:
            raise mismatch(layer, "the checkpoint has no mlp.substitutes tensor for it")


def rebuild_moe_blocks(model: nn.Module, block_cls: type[nn.Module], router_attr: str) -> None:
    """Replace every MoE block whose layer keeps fewer experts than the scalar count, and give substituting
    layers their full router and constants. Which layers are MoE layers is transformers' own choice: those its
    decoder layers built a ``block_cls`` for."""
    config = model.config
    counts = expert_counts(config)
    if counts is None:
        return
    subs = substituted_counts(config)
    for i, layer in enumerate(model.model.layers):
        moe = isinstance(layer.mlp, block_cls)
        if moe != (counts[i] > 0):
            raise ValueError(
                f"{EXPERTS_PER_LAYER_KEY}[{i}] = {counts[i]}, but layer {i} is "
                f"{'an MoE layer (it needs top-k or more experts)' if moe else 'dense in this config (0 experts)'}"
            )
        if moe and counts[i] != config.num_local_experts:
            layer.mlp = block_cls(layer_config(config, counts[i]))
        if subs[i]:
            router = getattr(layer.mlp, router_attr)
            setattr(layer.mlp, router_attr, type(router)(layer_config(config, counts[i] + subs[i])))
            substitute(layer.mlp, router_attr, counts[i], subs[i], config.hidden_size)


def substitute(block: nn.Module, router_attr: str, kept: int, count: int, hidden: int) -> None:
    """Give ``block`` its ``substitutes`` [count, hidden] and the hooks that answer router slots >= ``kept``:
    y_t = experts(h_t; slots < kept) + sum_{j: i_tj >= kept} w_tj * substitutes[i_tj - kept]."""
    block.substitutes = nn.Parameter(torch.zeros(count, hidden))
    part: list[torch.Tensor] = []

    def routed(module: nn.Module, args: Any, out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        logits, weights, indices = out[:3]
        dropped = indices >= kept
        rows = block.substitutes.float()[(indices - kept).clamp(min=0)]  # [T, k, H]
        part.append(((weights.float() * dropped).unsqueeze(-1) * rows).sum(1))
        return (logits, weights.masked_fill(dropped, 0), indices.masked_fill(dropped, 0), *out[3:])

    getattr(block, router_attr).register_forward_hook(routed)
    block.experts.register_forward_hook(lambda module, args, out: out + part.pop().to(out.dtype))


class _ChecksTensors:
    """``from_pretrained`` of a local folder compares its tensors with the config before loading."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        path = str(pretrained_model_name_or_path)
        if os.path.isdir(path):
            config = kwargs.get("config")
            if not isinstance(config, cls.config_class):
                config = cls.config_class.from_pretrained(path)
            check_tensors(_shapes(path), config)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class PrunedQwen3MoeForCausalLM(_ChecksTensors, Qwen3MoeForCausalLM):
    """Qwen3-MoE causal LM with per-layer expert counts."""

    # The experts modules are the family's own, so transformers' grouped_mm / batched_mm kernels work; transformers
    # only offers them to classes whose module source contains its experts decorator, which ours need not.
    _can_set_experts_implementation_cached_value = True

    def __init__(self, config: Qwen3MoeConfig):
        super().__init__(config)
        rebuild_moe_blocks(self, Qwen3MoeSparseMoeBlock, "gate")
        self.post_init()


class PrunedGptOssForCausalLM(_ChecksTensors, GptOssForCausalLM):
    """GPT-OSS causal LM with per-layer expert counts."""

    _can_set_experts_implementation_cached_value = True  # as above

    def __init__(self, config: GptOssConfig):
        super().__init__(config)
        rebuild_moe_blocks(self, GptOssMLP, "router")
        self.post_init()
