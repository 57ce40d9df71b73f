"""Physical slicing: invariants on both families, MXFP4 layout, refusals."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.models.adapters import GPT_OSS, adapter_for
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.checkpoint import checkpoint_summary
from moe_specialists.models.plan import plan_from_kept as plan_for
from moe_specialists.pruning.collect import collect_transformers
from moe_specialists.pruning.data import CalibrationSequence
from tests.tiny import save_tiny, tiny_tokenizer

FAMILIES = ["qwen3_moe", "gpt_oss"]
TEXT = "Wie spät ist es? Der Zug fährt um acht Uhr."


def logits(model_dir, text=TEXT):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tiny_tokenizer()(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_all_experts_gives_identical_logits(tmp_path, family):
    base = save_tiny(family, tmp_path / "base", max_shard_size="300KB")
    spec = apply_plan(plan_for(base, [list(range(16))] * 4), tmp_path / "spec")
    assert torch.equal(logits(base), logits(spec))


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_unselected_experts_keeps_logits_on_that_input(tmp_path, family):
    """Both families renormalise over the top-k (the tiny Qwen3 sets norm_topk_prob), so experts that no
    token of an input selects can go without changing that input's logits."""
    base = save_tiny(family, tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    assert adapter_for(model.config).renormalises(model.config)
    stats = collect_transformers(
        model, tiny_tokenizer(), [CalibrationSequence("en-de", TEXT)], reap=False, progress=False
    )
    kept = [[e for e in range(16) if row[e] > 0] for row in stats.groups["en-de"].select]
    assert all(4 <= len(k) < 16 for k in kept), kept  # something is really removed in every layer
    spec = apply_plan(plan_for(base, kept), tmp_path / "spec")
    assert torch.allclose(logits(base), logits(spec), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_uniform_plan_loads_with_planned_parameters_and_generates(tmp_path, family):
    base = save_tiny(family, tmp_path / "base", max_shard_size="300KB")
    kept = [list(range(16)), [0, 3, 5, 7, 9, 11], [1, 2, 4, 6, 8, 10, 12, 13, 14, 15, 0], [2, 5, 8, 11]]
    kept = [sorted(k) for k in kept]
    plan = plan_for(base, kept)
    spec = apply_plan(plan, tmp_path / "spec")
    config = json.loads((spec / "config.json").read_text())
    adapter = adapter_for(config)
    assert config["num_experts_per_layer"] == [16, 6, 11, 4]
    assert config["architectures"] == [adapter.pruned_architecture]
    assert adapter.num_experts(config) == 16 and config["model_type"] == family
    assert (spec / "plan.json").is_file() and (spec / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(spec)
    assert type(model).__name__ == adapter.pruned_architecture
    assert sum(p.numel() for p in model.parameters()) == plan.parameters < plan.base.parameters
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    # kept experts are the base's experts, renumbered in order
    base_model = AutoModelForCausalLM.from_pretrained(base)
    b, s = adapter.experts(base_model, 1), adapter.experts(model, 1)
    for name, p in s.named_parameters():
        assert torch.equal(p, getattr(b, name)[kept[1]])


def test_plan_for_another_model_is_refused(tmp_path):
    a = save_tiny("qwen3_moe", tmp_path / "a")
    b = save_tiny("qwen3_moe", tmp_path / "b", experts=8, top_k=2)
    with pytest.raises(ValueError, match="made for another model.*experts per layer"):
        apply_plan(plan_for(a, [list(range(8))] * 4), tmp_path / "out", base=b)
    gpt = save_tiny("gpt_oss", tmp_path / "g")
    with pytest.raises(ValueError, match="family 'qwen3_moe' vs 'gpt_oss'"):
        apply_plan(plan_for(a, [list(range(16))] * 4), tmp_path / "out", base=gpt)
    assert not (tmp_path / "out").exists()


def test_modified_or_corrupt_checkpoint_is_refused_and_leaves_nothing(tmp_path):
    base = save_tiny("qwen3_moe", tmp_path / "base")
    plan = plan_for(base, [list(range(8))] * 4)
    shard = base / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        apply_plan(plan, tmp_path / "out")
    shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(ValueError, match="corrupt or not safetensors"):
        apply_plan(plan, tmp_path / "out", verify=False)
    assert not any(p.name.startswith(".out") or p.name == "out" for p in tmp_path.iterdir())


def test_mxfp4_gpt_oss_layout_slices_blocks_scales_and_biases(tmp_path):
    """A tiny checkpoint with the released gpt-oss-20b expert layout (names and shapes as transformers'
    MXFP4 integration reads them): *_blocks [E, rows, cols/32, 16] u8, *_scales [E, rows, cols/32] u8."""
    E, H, I, layers = 8, 128, 64, 2  # noqa: E741 (the paper's names)
    base = save_tiny("gpt_oss", tmp_path / "bf16", experts=E, top_k=2, layers=layers)
    with safe_open(base / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    g = torch.Generator().manual_seed(0)
    for i in range(layers):
        p = f"model.layers.{i}.mlp.experts."
        for key in ("gate_up_proj", "down_proj"):
            del tensors[p + key]
        u8 = lambda *s: torch.randint(0, 256, s, dtype=torch.uint8, generator=g)  # noqa: E731
        tensors[p + "gate_up_proj_blocks"] = u8(E, 2 * I, H // 32, 16)
        tensors[p + "gate_up_proj_scales"] = u8(E, 2 * I, H // 32)
        tensors[p + "down_proj_blocks"] = u8(E, H, I // 32, 16)
        tensors[p + "down_proj_scales"] = u8(E, H, I // 32)
        for key in ("gate_up_proj_bias", "down_proj_bias"):
            tensors[p + key] = tensors[p + key].to(torch.bfloat16)
    mx = tmp_path / "mxfp4"
    mx.mkdir()
    save_file(tensors, mx / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["router", "lm_head"]}
    (mx / "config.json").write_text(json.dumps(config))
    summary = checkpoint_summary(mx)
    # a block byte holds two 4-bit weights; scales are not parameters
    # per expert: weights 2I*H + H*I, biases 2I + H, router row H + 1 bias
    assert summary["parameters_per_expert"][0] == 2 * I * H + H * I + 2 * I + H + H + 1
    kept = [[1, 4, 6], [0, 2, 3, 7]]
    spec = apply_plan(plan_for(mx, kept), tmp_path / "spec")
    with safe_open(spec / "model.safetensors", "pt") as f:
        for i, k in enumerate(kept):
            for name, t in tensors.items():
                role = GPT_OSS.tensor_role(name)
                if role is None or role.layer != i:
                    continue
                out = f.get_tensor(name)
                assert out.shape == (len(k), *t.shape[1:]) and out.dtype == t.dtype
                for new, old in enumerate(k):  # each kept expert's bytes unchanged
                    assert (
                        out[new].reshape(-1).view(torch.uint8).tolist() == t[old].reshape(-1).view(torch.uint8).tolist()
                    )
    cfg = json.loads((spec / "config.json").read_text())
    assert cfg["num_experts_per_layer"] == [3, 4] and cfg["num_local_experts"] == 4
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
