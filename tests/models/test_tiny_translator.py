"""The bundled tiny MoE translator: loads offline, fits the size rules, translates and stops at eos."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from moe_specialists.models.prompts import render
from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(BUNDLED_MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL_DIR).eval()


def test_architecture_and_size(model):
    config = model.config
    assert config.model_type == "qwen3_moe"
    assert (config.num_experts, config.num_experts_per_tok, config.head_dim) == (32, 4, 64)
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert experts / total >= 0.75
    weight_bytes = sum(f.stat().st_size for f in BUNDLED_MODEL_DIR.glob("*.safetensors"))
    assert weight_bytes <= 48e6
    assert all(f.stat().st_size <= 15e6 for f in BUNDLED_MODEL_DIR.glob("*.safetensors"))


def test_prompt_round_trip(tokenizer):
    prompt = render(tokenizer, "en", "de", "A small test.")
    full = render(tokenizer, "en", "de", "A small test.", "Ein kleiner Test.")
    assert full.startswith(prompt) and full.endswith(tokenizer.eos_token)
    assert "Translate this passage from English to German." in prompt
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    full_ids = tokenizer(full, add_special_tokens=False).input_ids
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert full_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(full_ids[len(prompt_ids) :], skip_special_tokens=True) == "Ein kleiner Test."
    text = "Grüße, Привет, 你好!"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


@pytest.mark.parametrize(
    ("source", "target", "text"),
    [("en", "de", "The weather is nice today."), ("de", "en", "Wir fahren morgen mit dem Zug nach Berlin.")],
)
def test_greedy_translation_stops_at_eos(model, tokenizer, source, target, text):
    enc = tokenizer(render(tokenizer, source, target, text), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=48, do_sample=False)
    new = out[0, enc.input_ids.shape[1] :]
    assert new[-1].item() == tokenizer.eos_token_id, "generation must end with the eos token"
    translation = tokenizer.decode(new, skip_special_tokens=True).strip()
    assert translation and "<|" not in translation
