"""transformers classes with per-layer expert counts, and how AutoModelForCausalLM picks them."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GptOssForCausalLM, Qwen3MoeForCausalLM

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.models.pruned import PrunedGptOssForCausalLM, PrunedQwen3MoeForCausalLM
from tests.tiny import build_model, tiny_config

CASES = [("qwen3_moe", Qwen3MoeForCausalLM, PrunedQwen3MoeForCausalLM),
         ("gpt_oss", GptOssForCausalLM, PrunedGptOssForCausalLM)]


@pytest.mark.parametrize(("family", "base_cls", "pruned_cls"), CASES)
def test_auto_class_follows_architectures(tmp_path, family, base_cls, pruned_cls):
    plain = tiny_config(family)
    plain.architectures = None  # a config built from scratch
    assert type(AutoModelForCausalLM.from_config(plain)) is base_cls
    pruned = tiny_config(family, counts=[16, 6, 11, 4])
    assert type(AutoModelForCausalLM.from_config(pruned)) is pruned_cls
    build_model(family, counts=[16, 6, 11, 4]).save_pretrained(tmp_path / "p")
    build_model(family).save_pretrained(tmp_path / "b")
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "p")) is pruned_cls
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "b")) is base_cls


@pytest.mark.parametrize(("family", "base_cls", "pruned_cls"), CASES)
def test_each_layer_has_its_own_expert_count(family, base_cls, pruned_cls):
    model = build_model(family, counts=[16, 6, 11, 4])
    from moe_specialists.models.adapters import adapter_for

    adapter = adapter_for(model.config)
    for layer, count in enumerate([16, 6, 11, 4]):
        assert adapter.router(model, layer).weight.shape[0] == count
        assert all(p.shape[0] == count for p in adapter.experts(model, layer).parameters())
    out = model(input_ids=torch.tensor([[3, 4, 5]])).logits
    assert out.shape == (1, 3, model.config.vocab_size) and torch.isfinite(out).all()


def test_inconsistent_counts_are_refused():
    with pytest.raises(ValueError, match="has 3 entries, the model has 4 layers"):
        build_model("qwen3_moe", counts=[16, 6, 11])
    with pytest.raises(ValueError, match="layer 3 keeps 2 experts; each MoE layer needs top-k=4"):
        build_model("qwen3_moe", counts=[16, 6, 11, 2])


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
@pytest.mark.parametrize("kernel", ["grouped_mm", "batched_mm"])
def test_pruned_classes_take_the_fast_expert_kernels(tmp_path, family, kernel):
    """transformers only offers experts_implementation to classes whose module source carries its decorator;
    the pruned classes reuse the family's experts, so the kernels must give eager's logits and gradients."""
    build_model(family, counts=[16, 6, 11, 4]).save_pretrained(tmp_path)
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])
    results = []
    for impl in ("eager", kernel):
        model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, experts_implementation=impl)
        assert model.config._experts_implementation == impl
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        grad = model.model.layers[1].mlp.experts.gate_up_proj.grad
        results.append((out.logits.detach(), grad))
    (logits, grad), (fast_logits, fast_grad) = results
    torch.testing.assert_close(fast_logits, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_grad, grad, rtol=1e-4, atol=1e-5)
