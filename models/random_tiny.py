"""Random tiny checkpoints of both families, in the on-disk format ``apply`` writes, for tests and benchmarks:
built from the real transformers config classes (hidden 128, head_dim 64: vLLM's CPU attention needs >= 64),
plus the engine settings that start vLLM on them quickly (``TINY_ENGINE``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

VOCAB = 320
# fp32, eager, a small KV cache and context, token-id prompts only
TINY_ENGINE: dict[str, Any] = dict(
    dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=8, seed=0, skip_tokenizer_init=True
)


def tiny_config(family: str, counts: list[int] | None = None, layers: int = 4, experts: int = 16) -> Any:
    """Hidden 128, head_dim 64 (vLLM's CPU attention needs >= 64), top-4, no EOS (greedy runs to the end)."""
    from transformers import GptOssConfig, Qwen3MoeConfig

    from moe_specialists.models.adapters import ADAPTERS

    common = dict(
        vocab_size=VOCAB, hidden_size=128, num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
        head_dim=64, num_experts_per_tok=4, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    if family == "qwen3_moe":
        config = Qwen3MoeConfig(**common, intermediate_size=256, moe_intermediate_size=64, num_experts=experts,
                                norm_topk_prob=True)
    else:
        config = GptOssConfig(**common, intermediate_size=64, num_local_experts=experts, sliding_window=128)
    adapter = ADAPTERS[family]
    config.architectures = [adapter.base_architecture]
    if counts is not None:
        config = type(config).from_dict(adapter.pruned_config_dict(config.to_dict(), counts))
    return config


def build_tiny(path: Path, family: str, counts: list[int] | None = None, seed: int = 0, **kw: Any) -> Path:
    """A random tiny checkpoint in the on-disk format `apply` writes (pruned when ``counts`` is given)."""
    from transformers import AutoModelForCausalLM

    import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, counts, **kw), dtype=torch.float32)
    model.save_pretrained(path)
    return path
