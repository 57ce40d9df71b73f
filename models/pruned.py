"""Pruned specialists in transformers: the classes with per-layer expert counts, their registration with
the Auto classes, and the loader used for statistics and training.

The classes (``modeling_pruned``, self-contained so specialist folders can carry it) are each family's own
causal LM with every MoE block rebuilt for its layer's count (``config.num_experts_per_layer[l]``).
``register_transformers()`` makes ``AutoModelForCausalLM.from_pretrained(dir)`` pick the pruned class when
config.json says ``architectures: [Pruned...]`` and the family's own class otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from moe_specialists.models import modeling_pruned
from moe_specialists.models.adapters import EXPERTS_PER_LAYER_KEY, GPT_OSS, QWEN3_MOE, FamilyAdapter
from moe_specialists.models.checkpoint import is_mxfp4
from moe_specialists.models.modeling_pruned import PrunedGptOssForCausalLM, PrunedQwen3MoeForCausalLM

# The classes live in modeling_pruned.py, which imports nothing of this project: `apply` copies it into
# specialist folders (config.json auto_map) for stock transformers with trust_remote_code=True.


def layer_config(config, adapter: FamilyAdapter, num_experts: int):
    """A copy of ``config`` whose scalar expert count is ``num_experts``."""
    assert adapter.num_experts_keys[-1] == "num_local_experts"  # what modeling_pruned sets
    return modeling_pruned.layer_config(config, num_experts)


def check_expert_counts(config, adapter: FamilyAdapter) -> list[int]:
    """``num_experts_per_layer`` validated (``modeling_pruned.expert_counts``: one per layer, 0 or top-k..E),
    each MoE layer of the family keeping experts and each dense layer none; uniform when absent."""
    counts = modeling_pruned.expert_counts(config)
    if counts is None:
        return adapter.experts_per_layer(config)
    moe = set(adapter.moe_layers(config))
    if wrong := [i for i, c in enumerate(counts) if (i in moe) != (c > 0)]:
        raise ValueError(
            f"{EXPERTS_PER_LAYER_KEY} {counts} disagrees with the config's MoE layers {sorted(moe)} in layers "
            f"{wrong}: an MoE layer keeps top-k or more experts, a dense layer 0"
        )
    return counts


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
    from transformers import AutoConfig

    extra = loading_policy(AutoConfig.from_pretrained(model_dir), experts_implementation)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), **extra)
    return cast_floats(model, dtype).to(device)


def loading_policy(config: Any, experts_implementation: str | None = None) -> dict[str, Any]:
    """``from_pretrained`` arguments of ``load_causal_lm``'s policy: MXFP4 dequantized everywhere."""
    from transformers import Mxfp4Config

    extra: dict[str, Any] = {"experts_implementation": experts_implementation} if experts_implementation else {}
    if is_mxfp4(config.to_dict()):
        extra["quantization_config"] = Mxfp4Config(dequantize=True)
    return extra


def cast_floats(model: nn.Module, dtype: str) -> nn.Module:
    """Every floating-point parameter in ``dtype`` (dequantized MXFP4 experts come in bf16 whatever dtype says)."""
    torch_dtype = getattr(torch, dtype)
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch_dtype:
            p.data = p.data.to(torch_dtype)
    return model


def register_transformers() -> None:
    """Let AutoModelForCausalLM choose the pruned class by config.json ``architectures``. Idempotent."""
    for config_cls, base_cls, pruned_cls in (
        (Qwen3MoeConfig, Qwen3MoeForCausalLM, PrunedQwen3MoeForCausalLM),
        (GptOssConfig, GptOssForCausalLM, PrunedGptOssForCausalLM),
    ):
        AutoModelForCausalLM.register(config_cls, _by_architecture(config_cls, base_cls, pruned_cls), exist_ok=True)


# Importing this module lets AutoModelForCausalLM load specialist folders (the transformers way: register at import).
register_transformers()
