"""A tiny RANDOM Qwen3-MoE checkpoint built on the fly: for tests and for ``serve`` before the bundled
translator exists. Its weights are random, so it translates nothing: it produces garbage tokens.

The tokenizer is a byte-level BPE trained here on a few lines (no download), saved with a chat template of
the same shape as the bundled translator's, so ``models.prompts.render`` works on it.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_MODEL_NOTE = (
    "tiny RANDOM Qwen3-MoE model built on the fly (demo only: it produces garbage, not translations); "
    "it is replaced by the bundled tiny translator once that ships"
)

_PAD, _USER, _ASSISTANT, _END = "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"
_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}" + _USER + "{{ message['content'] }}" + _END
    + "{%- elif message['role'] == 'assistant' -%}" + _ASSISTANT + "{{ message['content'] }}" + _END
    + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + _ASSISTANT + "{%- endif -%}"
)
_CORPUS = [
    "Translate this passage from English to German.",
    "Translate this passage from German to English.",
    "Translate this passage from English to French.",
    "Translate this passage from French to English.",
    "The cat sits on the mat. Hello world, how are you today?",
    "Die Katze sitzt auf der Matte. Hallo Welt, wie geht es dir heute?",
    "Le chat est assis sur le tapis. Bonjour le monde, comment allez-vous?",
]


def build_tokenizer(vocab_size: int = 400):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_PAD, _USER, _ASSISTANT, _END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=_END,
        pad_token=_PAD,
        additional_special_tokens=[_USER, _ASSISTANT],
        chat_template=_CHAT_TEMPLATE,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_moe(
    out_dir: str | Path,
    *,
    num_layers: int = 2,
    num_experts: int = 8,
    top_k: int = 2,
    hidden_size: int = 128,
    seed: int = 0,
) -> Path:
    """Save a random Qwen3-MoE (head_dim 64, so vLLM's CPU attention accepts it) with its tokenizer in
    ``out_dir``; reuse it when ``out_dir/config.json`` exists already. Returns ``out_dir``."""
    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = Qwen3MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        moe_intermediate_size=hidden_size // 2,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        norm_topk_prob=True,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(config).to(torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(f"# tiny random model\n\n{TINY_MODEL_NOTE}.\n")
    (out / "tiny_model.json").write_text(json.dumps({"note": TINY_MODEL_NOTE, "seed": seed}) + "\n")
    return out
