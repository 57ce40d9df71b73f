"""transformers model classes whose MoE layers have different expert counts (pruned specialists).

Each class is the family's own causal LM with every MoE block rebuilt from a copy of the config whose
scalar expert count is that layer's count (``config.num_experts_per_layer[l]``). Nothing else changes, so
the standard loading path (including the on-disk -> fused expert conversion) loads the sliced weights.
``register_transformers()`` makes ``AutoModelForCausalLM.from_pretrained(dir)`` pick the pruned class when
config.json says ``architectures: [Pruned...]`` and the family's own class otherwise.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from moe_specialists.models.adapters import EXPERTS_PER_LAYER_KEY, GPT_OSS, QWEN3_MOE, FamilyAdapter, decoder_layers


def layer_config(config, adapter: FamilyAdapter, num_experts: int):
    """A copy of ``config`` whose scalar expert count is ``num_experts``."""
    out = copy.deepcopy(config)
    setattr(out, adapter.num_experts_keys[-1], num_experts)
    return out


def check_expert_counts(config, adapter: FamilyAdapter) -> list[int]:
    """Validate ``num_experts_per_layer`` against the config; return it."""
    counts = adapter.experts_per_layer(config)
    n_layers, k, moe = adapter.num_layers(config), adapter.top_k(config), set(adapter.moe_layers(config))
    if len(counts) != n_layers:
        raise ValueError(f"{EXPERTS_PER_LAYER_KEY} has {len(counts)} entries, the model has {n_layers} layers")
    for i, c in enumerate(counts):
        if i in moe and not k <= c <= adapter.num_experts(config):
            raise ValueError(
                f"layer {i} keeps {c} experts; each MoE layer needs top-k={k} <= count <= "
                f"{adapter.num_experts(config)} (the scalar expert count, the max of {EXPERTS_PER_LAYER_KEY})"
            )
    return counts


def rebuild_moe_blocks(model: nn.Module, adapter: FamilyAdapter, block_cls: type[nn.Module]) -> None:
    """Replace every MoE block whose layer keeps fewer experts than the scalar count."""
    config = model.config
    counts = check_expert_counts(config, adapter)
    full = adapter.num_experts(config)
    layers = decoder_layers(model)
    for i in adapter.moe_layers(config):
        if counts[i] != full:
            setattr(layers[i], adapter.mlp_attr, block_cls(layer_config(config, adapter, counts[i])))


class PrunedQwen3MoeForCausalLM(Qwen3MoeForCausalLM):
    """Qwen3-MoE causal LM with per-layer expert counts."""

    # The experts modules are the family's own, so transformers' grouped_mm / batched_mm kernels work; transformers
    # only offers them to classes whose module source contains its experts decorator, which ours need not.
    _can_set_experts_implementation_cached_value = True

    def __init__(self, config: Qwen3MoeConfig):
        super().__init__(config)
        rebuild_moe_blocks(self, QWEN3_MOE, Qwen3MoeSparseMoeBlock)
        self.post_init()


class PrunedGptOssForCausalLM(GptOssForCausalLM):
    """GPT-OSS causal LM with per-layer expert counts."""

    _can_set_experts_implementation_cached_value = True  # as above

    def __init__(self, config: GptOssConfig):
        super().__init__(config)
        rebuild_moe_blocks(self, GPT_OSS, GptOssMLP)
        self.post_init()


PRUNED_CLASSES: dict[str, type[nn.Module]] = {
    QWEN3_MOE.pruned_architecture: PrunedQwen3MoeForCausalLM,
    GPT_OSS.pruned_architecture: PrunedGptOssForCausalLM,
}


def _by_architecture(config_cls: type, base_cls: type, pruned_cls: type) -> type:
    """An AutoModelForCausalLM entry that builds ``pruned_cls`` when config.architectures names it and
    ``base_cls`` otherwise (transformers' own tuple entries fail on configs whose architectures is None)."""

    def pick(config) -> type:
        return pruned_cls if pruned_cls.__name__ in (getattr(config, "architectures", None) or []) else base_cls

    def from_pretrained(cls, *args, config=None, **kwargs):
        return pick(config).from_pretrained(*args, config=config, **kwargs)

    def _from_config(cls, config, **kwargs):
        return pick(config)._from_config(config, **kwargs)

    return type(
        f"{base_cls.__name__}OrPruned",
        (),
        {"config_class": config_cls, "from_pretrained": classmethod(from_pretrained),
         "_from_config": classmethod(_from_config)},
    )


def load_causal_lm(
    model_dir: str | Path, dtype: str = "float32", device: str = "cpu", experts_implementation: str | None = None
) -> nn.Module:
    """``AutoModelForCausalLM`` (the pruned classes once registered) with every parameter in ``dtype``, on
    ``device``; ``experts_implementation``: transformers' eager (default), batched_mm or grouped_mm.

    MXFP4 checkpoints (gpt-oss as released) are dequantized, whatever is installed: statistics hooks, the
    pruned classes and training need the family's own experts module. Left to itself, transformers swaps in
    its MXFP4 kernel module (``Mxfp4GptOssExperts``, called with routing data instead of the top-k tensors)
    on CUDA machines that have the ``kernels`` package, and dequantizes elsewhere, always to bf16;
    ``Mxfp4Config(dequantize=True)`` takes the dequantizing path everywhere, then the cast below gives the
    requested dtype (serving keeps MXFP4: vLLM reads the blocks itself)."""
    from transformers import AutoConfig, Mxfp4Config

    torch_dtype = getattr(torch, dtype)
    extra: dict = {"experts_implementation": experts_implementation} if experts_implementation else {}
    quantization = getattr(AutoConfig.from_pretrained(model_dir), "quantization_config", None) or {}
    if not isinstance(quantization, dict):
        quantization = quantization.to_dict()
    if quantization.get("quant_method") == "mxfp4":
        extra["quantization_config"] = Mxfp4Config(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, **extra)
    for p in model.parameters():  # the dequantized experts come in bf16 whatever dtype says
        if p.is_floating_point() and p.dtype != torch_dtype:
            p.data = p.data.to(torch_dtype)
    return model.to(device)


def register_transformers() -> None:
    """Let AutoModelForCausalLM choose the pruned class by config.json ``architectures``. Idempotent."""
    for config_cls, base_cls, pruned_cls in (
        (Qwen3MoeConfig, Qwen3MoeForCausalLM, PrunedQwen3MoeForCausalLM),
        (GptOssConfig, GptOssForCausalLM, PrunedGptOssForCausalLM),
    ):
        AutoModelForCausalLM.register(config_cls, _by_architecture(config_cls, base_cls, pruned_cls), exist_ok=True)


# Importing this module lets AutoModelForCausalLM load specialist folders (the transformers way: register at import).
register_transformers()
