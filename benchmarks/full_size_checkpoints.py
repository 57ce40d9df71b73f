"""Random-weight checkpoints in the released layouts of openai/gpt-oss-20b (MXFP4 experts) and Qwen/Qwen3-30B-A3B
(per-expert bf16 tensors) at full size, for ``benchmarks/full_size.py``: the two config.json files, every
tensor's (name, dtype, shape) in file order, and a writer that streams random tensors into shards with an index.
Random bytes stand for the MXFP4 blocks (every byte is two valid FP4 codes) with scales near 2^-8."""

from __future__ import annotations

import json
from pathlib import Path

import torch

GPT_OSS_20B = {  # openai/gpt-oss-20b config.json
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0, "eos_token_id": 200002,
    "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880,
    "initial_context_length": 4096, "initializer_range": 0.02, "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12, "max_position_embeddings": 131072,
    "model_type": "gpt_oss", "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
    "num_key_value_heads": 8, "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
    "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                       "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                     "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 201088,
}
QWEN3_30B_A3B = {  # Qwen/Qwen3-30B-A3B config.json (num_hidden_layers set by --qwen-layers)
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
    "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 768,
    "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}

def gpt_oss_tensors(c: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor of the released gpt-oss checkpoint, in file order."""
    H, E, I, V = c["hidden_size"], c["num_local_experts"], c["intermediate_size"], c["vocab_size"]  # noqa: N806, E741
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    out = [("model.embed_tokens.weight", "BF16", (V, H))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", "BF16", (H,)), (p + "post_attention_layernorm.weight", "BF16", (H,))]
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            out += [(p + f"self_attn.{name}.weight", "BF16", (rows, H)),
                    (p + f"self_attn.{name}.bias", "BF16", (rows,))]
        out += [(p + "self_attn.o_proj.weight", "BF16", (H, q)), (p + "self_attn.o_proj.bias", "BF16", (H,)),
                (p + "self_attn.sinks", "BF16", (c["num_attention_heads"],)),
                (p + "mlp.router.weight", "BF16", (E, H)), (p + "mlp.router.bias", "BF16", (E,)),
                (p + "mlp.experts.gate_up_proj_blocks", "U8", (E, 2 * I, H // 32, 16)),
                (p + "mlp.experts.gate_up_proj_scales", "U8", (E, 2 * I, H // 32)),
                (p + "mlp.experts.gate_up_proj_bias", "BF16", (E, 2 * I)),
                (p + "mlp.experts.down_proj_blocks", "U8", (E, H, I // 32, 16)),
                (p + "mlp.experts.down_proj_scales", "U8", (E, H, I // 32)),
                (p + "mlp.experts.down_proj_bias", "BF16", (E, H))]
    return out + [("model.norm.weight", "BF16", (H,)), ("lm_head.weight", "BF16", (V, H))]


def qwen3_tensors(c: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    H, E, I, V = c["hidden_size"], c["num_experts"], c["moe_intermediate_size"], c["vocab_size"]  # noqa: N806, E741
    q, kv, d = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"], c["head_dim"]
    out = [("model.embed_tokens.weight", "BF16", (V, H))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", "BF16", (H,)), (p + "post_attention_layernorm.weight", "BF16", (H,)),
                (p + "self_attn.q_proj.weight", "BF16", (q, H)), (p + "self_attn.k_proj.weight", "BF16", (kv, H)),
                (p + "self_attn.v_proj.weight", "BF16", (kv, H)), (p + "self_attn.o_proj.weight", "BF16", (H, q)),
                (p + "self_attn.q_norm.weight", "BF16", (d,)), (p + "self_attn.k_norm.weight", "BF16", (d,)),
                (p + "mlp.gate.weight", "BF16", (E, H))]
        for j in range(E):
            out += [(p + f"mlp.experts.{j}.gate_proj.weight", "BF16", (I, H)),
                    (p + f"mlp.experts.{j}.up_proj.weight", "BF16", (I, H)),
                    (p + f"mlp.experts.{j}.down_proj.weight", "BF16", (H, I))]
    return out + [("model.norm.weight", "BF16", (H,)), ("lm_head.weight", "BF16", (V, H))]


def random_tensor(name: str, dtype: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    if name.endswith("_blocks"):
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    if name.endswith("_scales"):
        return torch.randint(119 - 2, 119 + 2, shape, dtype=torch.uint8, generator=g)  # 2^-10 .. 2^-7
    if name.endswith(("norm.weight", "layernorm.weight")):
        return torch.ones(shape, dtype=torch.bfloat16)
    std = 0.5 if name.endswith(("router.weight", "mlp.gate.weight")) else 0.02
    return (torch.randn(shape, generator=g) * std).to(torch.bfloat16)


def write_checkpoint(folder: Path, config: dict, tensors: list, shard_bytes: float, zero_based: bool) -> dict:
    """Random tensors in shards of about ``shard_bytes``, written tensor by tensor, with an index."""
    from moe_specialists.models.apply import TensorCopy, safetensors_header

    size = {"BF16": 2, "U8": 1}
    nbytes = [size[d] * int(torch.tensor(s).prod()) for _, d, s in tensors]
    n_shards = max(1, round(sum(nbytes) / shard_bytes))
    groups: list[list[int]] = [[] for _ in range(n_shards)]
    done, total = 0, sum(nbytes)
    for i, n in enumerate(nbytes):
        groups[min(n_shards - 1, done * n_shards // total)].append(i)
        done += n
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    weight_map = {}
    for s, group in enumerate(groups):
        file = f"model-{s if zero_based else s + 1:05d}-of-{n_shards - 1 if zero_based else n_shards:05d}.safetensors"
        copies = [TensorCopy(tensors[i][0], tensors[i][1], tensors[i][2], ((0, nbytes[i]),)) for i in group]
        with open(folder / file, "wb") as f:
            f.write(safetensors_header(copies))
            for i in group:
                f.write(memoryview(random_tensor(*tensors[i], g).view(torch.uint8).numpy()))
        weight_map.update({tensors[i][0]: file for i in group})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return {"bytes": total, "largest_tensor": max(nbytes), "largest_shard": max(
        sum(nbytes[i] for i in grp) for grp in groups), "shards": n_shards}
