"""Tiny models for tests, built from real transformers config classes (head_dim 64: vLLM's CPU attention
needs it) with a byte-level tokenizer that has a chat template. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GptOssConfig,
    GptOssForCausalLM,
    PreTrainedTokenizerFast,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from moe_specialists.models.pruned import PRUNED_CLASSES

SPECIALS = ["<pad>", "<eos>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<eos>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Every byte is a token (vocab 256 + 4 specials): handles any language, no training needed."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


VOCAB = 264  # 260 tokens rounded up


def tiny_config(
    family: str, experts: int = 16, top_k: int = 4, layers: int = 4, counts: list[int] | None = None, **overrides
):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=128,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        num_experts_per_tok=top_k,
        max_position_embeddings=2048,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    common |= {key: overrides.pop(key) for key in list(overrides) if key in common}
    if family == "qwen3_moe":
        overrides.setdefault("norm_topk_prob", True)
        cfg = Qwen3MoeConfig(
            **common, intermediate_size=256, moe_intermediate_size=64, num_experts=experts, **overrides
        )
        base, pruned = "Qwen3MoeForCausalLM", "PrunedQwen3MoeForCausalLM"
    elif family == "gpt_oss":
        cfg = GptOssConfig(**common, intermediate_size=64, num_local_experts=experts, sliding_window=128, **overrides)
        base, pruned = "GptOssForCausalLM", "PrunedGptOssForCausalLM"
    else:
        raise ValueError(family)
    if counts is not None:
        cfg.num_experts_per_layer = counts
    cfg.architectures = [pruned if counts is not None else base]
    return cfg


def build_model(family: str, seed: int = 0, **kwargs):
    cfg = tiny_config(family, **kwargs)
    torch.manual_seed(seed)
    if kwargs.get("counts") is not None:
        cls = PRUNED_CLASSES[cfg.architectures[0]]
    else:
        cls = Qwen3MoeForCausalLM if family == "qwen3_moe" else GptOssForCausalLM
    model = cls(cfg).eval()
    # random init gives near-uniform routers; spread them so routing is decisive
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("mlp.gate.weight", "mlp.router.weight")):
                p.normal_(0, 0.5)
    return model


def save_tiny(
    family: str, path: Path, dtype: torch.dtype = torch.float32, max_shard_size: str | None = None, **kwargs
) -> Path:
    """A tiny model + tokenizer folder."""
    model = build_model(family, **kwargs).to(dtype)
    model.save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    tiny_tokenizer().save_pretrained(path)
    return path


def save_endless(path: Path, **kwargs) -> Path:
    """``save_tiny`` of a Qwen3-MoE model whose end-of-text logit is fixed at 0 (its output row zeroed): the
    largest of the 263 other random logits is above 0, so greedy decoding never stops before max_tokens."""
    model = build_model("qwen3_moe", **{"layers": 2, "experts": 8, "top_k": 2, **kwargs})
    with torch.no_grad():
        model.lm_head.weight[model.config.eos_token_id] = 0
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
