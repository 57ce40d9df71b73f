"""transformers classes for pruned MoE specialists (per-layer expert counts): Qwen3-MoE and GPT-OSS.

SELF-CONTAINED on purpose (it imports only torch and transformers): ``apply`` copies this file into every
specialist folder and config.json's ``auto_map`` names it, so
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` works where moe-specialists is not
installed. Inside the project, ``models.pruned`` registers the same classes with the Auto classes.

Each class is the family's own causal LM with every MoE block rebuilt from a copy of the config whose scalar
expert count is that layer's count (config.json ``num_experts_per_layer[l]``, 0 for dense layers). Nothing
else changes, so transformers' standard loading (on-disk -> fused experts conversion, MXFP4 dequantization)
loads the sliced weights. Loading from a local folder first compares the safetensors headers with the
per-layer counts and refuses a disagreement, naming the layer, the numbers and the tensor.
"""

from __future__ import annotations

import copy
import json
import os
import re
import struct
from typing import Any

from torch import nn
from transformers import GptOssConfig, GptOssForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

EXPERTS_PER_LAYER_KEY = "num_experts_per_layer"
_ROUTER = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.(?:gate|router)\.(?:weight|bias)$")
_PACKED = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.experts\.(?:gate_up_proj|down_proj)(?:_bias|_blocks|_scales)?$")
_PER_EXPERT = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.experts\.(\d+)\.")


def moe_layers(config: Any) -> list[int]:
    """Decoder layers holding an MoE block (Qwen3: not in mlp_only_layers and (i+1) % decoder_sparse_step == 0)."""
    n = int(config.num_hidden_layers)
    if config.model_type == "qwen3_moe":
        dense = set(getattr(config, "mlp_only_layers", None) or [])
        step = int(getattr(config, "decoder_sparse_step", None) or 1)
        return [i for i in range(n) if i not in dense and (i + 1) % step == 0]
    return list(range(n))


def num_experts(config: Any) -> int:
    """The scalar expert count (the max of the per-layer counts in a specialist)."""
    value = getattr(config, "num_local_experts", None)
    return int(value if value is not None else config.num_experts)


def layer_config(config: Any, count: int) -> Any:
    """A copy of ``config`` whose scalar expert count is ``count``."""
    out = copy.deepcopy(config)
    out.num_local_experts = count
    return out


def check_expert_counts(config: Any) -> list[int]:
    """Validate ``num_experts_per_layer`` against the config; return it (uniform when absent)."""
    n_layers, k = config.num_hidden_layers, config.num_experts_per_tok
    full, moe = num_experts(config), moe_layers(config)
    counts = getattr(config, EXPERTS_PER_LAYER_KEY, None)
    if counts is None:
        return [full if i in moe else 0 for i in range(n_layers)]
    counts = [int(c) for c in counts]
    if len(counts) != n_layers:
        raise ValueError(f"{EXPERTS_PER_LAYER_KEY} has {len(counts)} entries, the model has {n_layers} layers")
    for i in moe:
        if not k <= counts[i] <= full:
            raise ValueError(
                f"layer {i} keeps {counts[i]} experts; each MoE layer needs top-k={k} <= count <= "
                f"{full} (the scalar expert count, the max of {EXPERTS_PER_LAYER_KEY})"
            )
    return counts


def _headers(folder: str) -> dict[str, list[int]]:
    """Tensor name -> shape, from the safetensors headers of a local checkpoint (no tensor data read)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    shapes: dict[str, list[int]] = {}
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        shapes.update({k: v["shape"] for k, v in header.items()})
    return shapes


def check_tensors(shapes: dict[str, list[int]], config: Any) -> None:
    """Refuse tensors that disagree with ``num_experts_per_layer``: router rows and expert stacks must hold
    c_l experts on dim 0, per-expert tensors must be numbered exactly 0..c_l-1."""
    counts = check_expert_counts(config)
    seen: dict[int, set[int]] = {}

    def mismatch(layer: int, what: str) -> ValueError:
        return ValueError(
            f"specialist config and tensors disagree in layer {layer}: config.json {EXPERTS_PER_LAYER_KEY}"
            f"[{layer}] = {counts[layer]}, but {what}. Re-run `apply` or fix config.json."
        )

    for name, shape in shapes.items():
        if m := _ROUTER.search(name) or _PACKED.search(name):
            layer = int(m.group(1))
            if layer >= len(counts) or shape[0] != counts[layer]:
                raise mismatch(layer, f"{name} holds {shape[0]} experts on dim 0")
        elif m := _PER_EXPERT.search(name):
            layer, expert = int(m.group(1)), int(m.group(2))
            if layer >= len(counts) or expert >= counts[layer]:
                raise mismatch(layer, f"the checkpoint has an expert numbered {expert} ({name})")
            seen.setdefault(layer, set()).add(expert)
    for layer, ids in sorted(seen.items()):
        if missing := sorted(set(range(counts[layer])) - ids):
            raise mismatch(layer, f"the checkpoint has only {len(ids)} experts (missing ids {missing})")


def rebuild_moe_blocks(model: nn.Module, block_cls: type[nn.Module]) -> None:
    """Replace every MoE block whose layer keeps fewer experts than the scalar count."""
    config = model.config
    counts, full = check_expert_counts(config), num_experts(config)
    for i in moe_layers(config):
        if counts[i] != full:
            model.model.layers[i].mlp = block_cls(layer_config(config, counts[i]))


class _ChecksTensors:
    """``from_pretrained`` of a local folder compares its tensors with the config before loading."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        path = str(pretrained_model_name_or_path)
        if os.path.isdir(path):
            config = kwargs.get("config")
            if not isinstance(config, cls.config_class):
                config = cls.config_class.from_pretrained(path)
            check_tensors(_headers(path), config)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class PrunedQwen3MoeForCausalLM(_ChecksTensors, Qwen3MoeForCausalLM):
    """Qwen3-MoE causal LM with per-layer expert counts."""

    # The experts modules are the family's own, so transformers' grouped_mm / batched_mm kernels work; transformers
    # only offers them to classes whose module source contains its experts decorator, which ours need not.
    _can_set_experts_implementation_cached_value = True

    def __init__(self, config: Qwen3MoeConfig):
        super().__init__(config)
        rebuild_moe_blocks(self, Qwen3MoeSparseMoeBlock)
        self.post_init()


class PrunedGptOssForCausalLM(_ChecksTensors, GptOssForCausalLM):
    """GPT-OSS causal LM with per-layer expert counts."""

    _can_set_experts_implementation_cached_value = True  # as above

    def __init__(self, config: GptOssConfig):
        super().__init__(config)
        rebuild_moe_blocks(self, GptOssMLP)
        self.post_init()
