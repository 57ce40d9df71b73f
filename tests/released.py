"""Tiny checkpoints written in the layouts of the released models, for tests (nothing is downloaded).

* GPT-OSS as openai/gpt-oss-20b ships: experts as MXFP4 ``*_blocks [E, out, in/32, 16]`` / ``*_scales
  [E, out, in/32]`` uint8 (encoded by ``models.mxfp4``), expert biases, routers, attention, norms and
  embeddings in bf16, the released ``quantization_config`` and config keys, shards named
  ``model-0000i-of-0000{n-1}`` (0-based, as released) with an index.
* Qwen3-MoE as Qwen/Qwen3-30B-A3B ships: per-expert tensors ``mlp.experts.<j>.{gate,up,down}_proj.weight``,
  the router ``mlp.gate.weight``, config keys ``num_experts``, ``norm_topk_prob``, ``mlp_only_layers``,
  ``decoder_sparse_step``, bf16, shards ``model-0000i-of-0000n`` (1-based) with an index.

Both get a byte-level tokenizer with a chat template and a parent model card (README.md with a licence in
its front matter, as the hub cards have) plus an eval_results.json, which specialists must not inherit.
Dimensions are tiny (hidden 128, head_dim 64: vLLM's CPU attention needs >= 64).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moe_specialists.models.mxfp4 import encode_experts
from tests.tiny import build_model, tiny_tokenizer

# openai/gpt-oss-20b config.json: quantization_config as released
GPT_OSS_QUANTIZATION = {
    "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                               "lm_head"],
    "quant_method": "mxfp4",
}
PARENT_CARD = "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# The parent model\n\nIts own card.\n"


def write_shards(path: Path, tensors: dict[str, torch.Tensor], shards: int, zero_based: bool) -> list[Path]:
    """Split ``tensors`` (in order) into ``shards`` files of about equal bytes, with an index."""
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    names = [
        f"model-{i if zero_based else i + 1:05d}-of-{shards - 1 if zero_based else shards:05d}.safetensors"
        for i in range(shards)
    ]
    groups: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    done = 0
    for name, t in tensors.items():
        groups[min(shards - 1, done * shards // total)][name] = t.contiguous()
        done += t.numel() * t.element_size()
    path.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for file, group in zip(names, groups, strict=True):
        assert group, "too many shards for this model"
        save_file(group, path / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return [path / n for n in names]


def _finish(path: Path, config: dict) -> Path:
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": config.get("eos_token_id"), "pad_token_id": config.get("pad_token_id")})
    )
    tiny_tokenizer().save_pretrained(path)
    (path / "README.md").write_text(PARENT_CARD)
    (path / "LICENSE").write_text("Apache License, Version 2.0\n")
    (path / "eval_results.json").write_text(json.dumps({"parent": {"chrf": 99.0}}))
    return path


def save_released_gpt_oss(
    path: Path, layers: int = 4, experts: int = 16, top_k: int = 4, shards: int = 3, seed: int = 0
) -> Path:
    """A random tiny GPT-OSS in the released MXFP4 layout. The model it stands for is the dequantized one."""
    model = build_model("gpt_oss", seed=seed, layers=layers, experts=experts, top_k=top_k)
    tensors: dict[str, torch.Tensor] = {}
    for name, p in model.state_dict().items():
        if name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            tensors[name + "_blocks"], tensors[name + "_scales"] = encode_experts(p.float())
        else:
            tensors[name] = p.to(torch.bfloat16)
    write_shards(path, dict(sorted(tensors.items())), shards, zero_based=True)
    config = model.config.to_dict()
    for key in ("dtype", "torch_dtype", "transformers_version", "_name_or_path"):
        config.pop(key, None)
    config.update(
        architectures=["GptOssForCausalLM"], quantization_config=GPT_OSS_QUANTIZATION, experts_per_token=top_k,
        initial_context_length=4096, torch_dtype="bfloat16",
    )
    return _finish(path, config)


def save_released_qwen3_moe(
    path: Path,
    layers: int = 4,
    experts: int = 16,
    top_k: int = 4,
    shards: int = 3,
    seed: int = 0,
    mlp_only_layers: list[int] | None = None,
    decoder_sparse_step: int = 1,
    norm_topk_prob: bool = True,
) -> Path:
    """A random tiny Qwen3-MoE in the released layout (bf16, per-expert tensors, released config keys)."""
    model = build_model(
        "qwen3_moe", seed=seed, layers=layers, experts=experts, top_k=top_k, mlp_only_layers=mlp_only_layers or [],
        decoder_sparse_step=decoder_sparse_step, norm_topk_prob=norm_topk_prob,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(path / ".hf")  # transformers' own on-disk names (per-expert)
    tensors = {}
    for file in sorted((path / ".hf").glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    shutil.rmtree(path / ".hf")
    assert any(k.endswith(".mlp.experts.0.gate_proj.weight") for k in tensors)  # per-expert, as released
    write_shards(path, dict(sorted(tensors.items())), shards, zero_based=False)
    c = model.config
    config = {  # the keys of Qwen/Qwen3-30B-A3B's config.json, in its order, with this model's values
        "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": c.bos_token_id, "decoder_sparse_step": decoder_sparse_step, "eos_token_id": c.eos_token_id,
        "head_dim": c.head_dim, "hidden_act": "silu", "hidden_size": c.hidden_size, "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size, "max_position_embeddings": c.max_position_embeddings,
        "max_window_layers": layers, "mlp_only_layers": list(c.mlp_only_layers), "model_type": "qwen3_moe",
        "moe_intermediate_size": c.moe_intermediate_size, "norm_topk_prob": norm_topk_prob,
        "num_attention_heads": c.num_attention_heads, "num_experts": experts, "num_experts_per_tok": top_k,
        "num_hidden_layers": layers, "num_key_value_heads": c.num_key_value_heads, "output_router_logits": False,
        "pad_token_id": c.pad_token_id, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": c.vocab_size,
    }
    return _finish(path, config)
