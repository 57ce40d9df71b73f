"""Tiny Qwen3-MoE checkpoints, their hand-counted sizes, and a plan over them, for the registry's tests."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import Qwen3MoeConfig

from moe_specialists.models.plan import Plan
from moe_specialists.models.pruned import PrunedQwen3MoeForCausalLM
from moe_specialists.models.registry.entries import SpecialistEntry

H, V, HEAD, NH, NKV, MOE_I = 128, 128, 64, 2, 1, 64
ATTN = H * NH * HEAD + 2 * H * NKV * HEAD + NH * HEAD * H + 2 * HEAD  # q, k, v, o, q_norm, k_norm
NORMS = 2 * H  # input + post-attention layernorms
PER_EXPERT = 3 * MOE_I * H + H  # gate, up, down + its router row
EMBED_HEAD_NORM = 2 * V * H + H  # embeddings, untied lm_head, final norm


def tiny_config(counts: list[int] | None) -> Qwen3MoeConfig:
    extra = {"num_experts_per_layer": counts, "architectures": ["PrunedQwen3MoeForCausalLM"]}
    return Qwen3MoeConfig(
        vocab_size=V, hidden_size=H, intermediate_size=256, moe_intermediate_size=MOE_I, num_hidden_layers=2,
        num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HEAD, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True,  # prunable: the top-k weights are renormalised
        **(extra if counts else {}),
    )  # fmt: skip


def save_tiny(folder: Path, counts: list[int] | None) -> int:
    """Save a tiny Qwen3-MoE (pruned to ``counts`` per layer, or the unpruned base); its parameter count."""
    model = PrunedQwen3MoeForCausalLM(tiny_config(counts))
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def tiny_plan(base: Path, kept1: list[int]) -> dict:
    """A plan over ``save_tiny(base, None)`` keeping every expert of layer 0 and ``kept1`` of layer 1."""
    return json.loads(
        Plan.model_validate(
            {
                "base": {
                    "id": str(base),
                    "family": "qwen3_moe",
                    "experts_per_layer": [8, 8],
                    "top_k": 2,
                    "parameters": 527_232,
                    "weight_bytes": 4 * 527_232,
                    "parameters_per_expert": [PER_EXPERT] * 2,
                },
                "recipe": {"drop": 2, "directions": ["en-de"]},
                "data_fingerprint": "test",
                "collector": "test",
                "layers": [0, 1],
                "kept": [list(range(8)), kept1],
                "scores": [[1.0] * 8, [float(i) for i in range(8)]],
                "parameters": EMBED_HEAD_NORM + 2 * (ATTN + NORMS) + (8 + len(kept1)) * PER_EXPERT,
            }  # fmt: skip
        ).model_dump_json()
    )


def make_entry(name: str = "a", **kw) -> SpecialistEntry:
    fields = {"base": "org/base", "path": "/nowhere", "family": "qwen3_moe", "directions": ["en-de"]} | kw
    return SpecialistEntry(name=name, **fields)
