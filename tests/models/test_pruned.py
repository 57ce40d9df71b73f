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


def test_dense_layers_keep_no_experts():
    """Which layers are MoE layers: transformers' decoder layers decide (modeling_pruned), the family adapter
    says the same to vLLM (``check_expert_counts``); a count for a dense layer, or none for an MoE layer, is
    refused naming the layer."""
    from moe_specialists.models.adapters import QWEN3_MOE
    from moe_specialists.models.pruned import check_expert_counts

    model = build_model("qwen3_moe", counts=[16, 0, 11, 4], mlp_only_layers=[1])
    assert [model.model.layers[i].mlp.experts.num_experts for i in (0, 2, 3)] == [16, 11, 4]
    assert not hasattr(model.model.layers[1].mlp, "experts")
    assert check_expert_counts(model.config, QWEN3_MOE) == [16, 0, 11, 4]
    with pytest.raises(ValueError, match=r"num_experts_per_layer\[1\] = 6, but layer 1 is dense"):
        build_model("qwen3_moe", counts=[16, 6, 11, 4], mlp_only_layers=[1])
    with pytest.raises(ValueError, match=r"num_experts_per_layer\[2\] = 0, but layer 2 is an MoE layer"):
        build_model("qwen3_moe", counts=[16, 6, 0, 4])
    wrong = tiny_config("qwen3_moe", counts=[16, 6, 11, 4], mlp_only_layers=[1])
    with pytest.raises(ValueError, match=r"disagrees with the config's MoE layers \[0, 2, 3\] in layers \[1\]"):
        check_expert_counts(wrong, QWEN3_MOE)
    assert check_expert_counts(tiny_config("qwen3_moe", mlp_only_layers=[1]), QWEN3_MOE) == [16, 0, 16, 16]


def test_mxfp4_checkpoints_are_loaded_dequantized():
    from transformers import GptOssConfig, Mxfp4Config, Qwen3MoeConfig

    from moe_specialists.models.pruned import loading_policy

    policy = loading_policy(GptOssConfig(quantization_config={"quant_method": "mxfp4"}), "grouped_mm")
    assert isinstance(policy["quantization_config"], Mxfp4Config) and policy["quantization_config"].dequantize
    assert policy["experts_implementation"] == "grouped_mm"
    config = GptOssConfig()
    config.quantization_config = Mxfp4Config()  # an object, as transformers keeps it once loaded
    assert "quantization_config" in loading_policy(config)
    assert loading_policy(Qwen3MoeConfig()) == {}
