"""Substitute plans (dropped experts answered by constants) written and loaded: the plan's constants file, the
specialist `apply` writes (full routers, kept rows first, ``mlp.substitutes``), and the transformers classes
computing exactly what the parent computes with ``models.masking.experts_substituted``, for both families and
for GPT-OSS in the released MXFP4 layout. Disagreements are refused by name."""

from __future__ import annotations

import json
import math
import traceback
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.masking import experts_substituted
from moe_specialists.models.plan import Plan, plan_from_kept
from moe_specialists.models.pruned import load_causal_lm
from tests.models.test_vllm_serving import FAMILIES, PROMPTS, build_tiny
from tests.released import save_released_gpt_oss

KEPT = [[0, 3, 5, 7, 9, 11, 13, 15], [1, 2, 3, 4, 5, 6], list(range(12)), [2, 4, 6, 8]]  # of 16, top-4
HIDDEN = 128


def substitute_plan(base: Path, out: Path, seed: int = 0) -> Plan:
    """``KEPT`` of ``base`` with random constants for the dropped experts, saved at ``out`` and read back."""
    plan = plan_from_kept(base, KEPT)
    g = torch.Generator().manual_seed(seed)
    constants = {lay: torch.randn(len(d), HIDDEN, generator=g) * 0.5 for lay, d in zip(plan.layers, plan.dropped(),
                                                                                      strict=True)}
    plan.with_constants(constants).save(out)
    return Plan.load(out)


def parent_constants(plan: Plan) -> dict[int, torch.Tensor]:
    """[E, H] per layer: the plan's constants in the dropped experts' rows (``experts_substituted``'s form)."""
    out = {}
    for lay, dropped in zip(plan.layers, plan.dropped(), strict=True):
        full = torch.zeros(plan.base.experts_per_layer[lay], HIDDEN)
        full[dropped] = plan.constants()[lay]
        out[lay] = full
    return out


def test_plan_constants_are_saved_beside_it_and_checked(tmp_path):
    base = build_tiny(tmp_path / "base", "qwen3_moe")
    plan = substitute_plan(base, tmp_path / "en-de.plan.json")
    side = tmp_path / "en-de.plan.substitutes.safetensors"
    assert plan.recipe.dropped == "substitute" and plan.substitutes.file == side.name
    assert [t.shape[0] for t in plan.constants().values()] == [8, 10, 4, 12]  # 16 - kept
    assert plan.dropped()[0] == [1, 2, 4, 6, 8, 10, 12, 14]
    raw = bytearray(side.read_bytes())
    raw[-1] ^= 1
    side.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        Plan.load(tmp_path / "en-de.plan.json").constants()
    side.unlink()
    with pytest.raises(ValueError, match="keep it beside the plan"):
        Plan.load(tmp_path / "en-de.plan.json").constants()
    with pytest.raises(ValueError, match=r"layer 1: it drops 10 experts, so it needs \[10, hidden_size\]"):
        plan_from_kept(base, KEPT).with_constants({0: torch.zeros(8, HIDDEN), 1: torch.zeros(9, HIDDEN)})
    drop_plan = plan_from_kept(base, KEPT)
    with pytest.raises(ValueError, match="drops its experts: it has no substitutes"):
        drop_plan.constants()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_substituted_specialist_computes_what_the_substituted_parent_computes(family, tmp_path):
    base = build_tiny(tmp_path / "base", family)
    plan = substitute_plan(base, tmp_path / "plan.json")
    spec = apply_plan(tmp_path / "plan.json", tmp_path / "spec")
    config = json.loads((spec / "config.json").read_text())
    assert config["num_experts_per_layer"] == [8, 6, 12, 4]
    assert config["num_substituted_experts_per_layer"] == [8, 10, 4, 12]
    router = "gate" if family == "qwen3_moe" else "router"
    with safe_open(spec / "model.safetensors", "pt") as f:  # the base's one shard, sliced
        weight = f.get_tensor(f"model.layers.1.mlp.{router}.weight")
        substitutes = f.get_tensor("model.layers.3.mlp.substitutes")
    with safe_open(next(base.glob("*.safetensors")), "pt") as f:
        base_weight = f.get_tensor(f"model.layers.1.mlp.{router}.weight")
    order = KEPT[1] + plan.dropped()[1]  # kept rows first, then the dropped ones
    torch.testing.assert_close(weight, base_weight[order], rtol=0, atol=0)
    torch.testing.assert_close(substitutes, plan.constants()[3], rtol=0, atol=0)
    assert (spec / "plan.substitutes.safetensors").is_file()  # the specialist's plan.json keeps its constants

    specialist = load_causal_lm(spec).eval()
    parent = load_causal_lm(base).eval()
    kept = dict(zip(plan.layers, plan.kept, strict=True))
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        got = specialist(ids).logits
        with experts_substituted(parent, adapter_for(parent.config), kept, parent_constants(plan)):
            want = parent(ids).logits
        dropped = load_causal_lm(apply_plan(plan_from_kept(base, KEPT), tmp_path / "dropped")).eval()(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, dropped, atol=1e-3)  # the constants are used


def test_an_mxfp4_gpt_oss_substitutes_with_its_kept_experts_in_mxfp4(tmp_path):
    base = save_released_gpt_oss(tmp_path / "base")
    plan = substitute_plan(base, tmp_path / "plan.json")
    spec = apply_plan(tmp_path / "plan.json", tmp_path / "spec")
    index = json.loads((spec / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.0.mlp.experts.gate_up_proj_blocks" in index  # the kept experts stay MXFP4
    parent = load_causal_lm(base, dtype="bfloat16").eval()
    specialist = load_causal_lm(spec, dtype="bfloat16").eval()
    ids = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        got = specialist(ids).logits.float()
        constants = {lay: c.bfloat16() for lay, c in parent_constants(plan).items()}  # the specialist's dtype
        with experts_substituted(parent, adapter_for(parent.config), dict(zip(plan.layers, plan.kept, strict=True)),
                                 constants):
            want = parent(ids).logits.float()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)  # bf16: the same sums in other orders


@pytest.mark.parametrize("change", ["router rows", "substitutes missing", "substitutes width"])
def test_a_specialist_whose_substitutes_disagree_with_its_config_is_refused(change, tmp_path):
    base = build_tiny(tmp_path / "base", "qwen3_moe")
    substitute_plan(base, tmp_path / "plan.json")
    spec = apply_plan(tmp_path / "plan.json", tmp_path / "spec")
    config = json.loads((spec / "config.json").read_text())
    if change == "router rows":
        config["num_substituted_experts_per_layer"][1] = 9
        message = r"layer 1: config.json num_experts_per_layer\[1\] = 6, num_substituted_experts_per_layer\[1\] = 9"
    elif change == "substitutes missing":
        config.pop("num_substituted_experts_per_layer")
        message = "routes over 16 experts"
    else:
        from safetensors.torch import load_file, save_file

        tensors = load_file(spec / "model.safetensors")
        tensors["model.layers.2.mlp.substitutes"] = tensors["model.layers.2.mlp.substitutes"][:, :64].contiguous()
        save_file(tensors, spec / "model.safetensors")
        message = r"model.layers.2.mlp.substitutes has shape \[4, 64\] \(expected \[4, 128\]\)"
    (spec / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_causal_lm(spec)


@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_serves_a_substituted_specialist_with_the_tokens_of_transformers(family, tmp_path):
    from tests.models.test_vllm_serving import hf_greedy, vllm_engine, vllm_greedy

    base = build_tiny(tmp_path / "base", family)
    substitute_plan(base, tmp_path / "plan.json", seed=1)
    spec = apply_plan(tmp_path / "plan.json", tmp_path / "spec")
    dropped = apply_plan(plan_from_kept(base, KEPT), tmp_path / "dropped")
    expected = hf_greedy(spec, PROMPTS, max_new_tokens=12)
    assert expected != hf_greedy(dropped, PROMPTS, max_new_tokens=12)  # the constants change the tokens
    with vllm_engine(spec) as llm:
        got = vllm_greedy(llm, PROMPTS, max_new_tokens=12)
    assert got == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_a_substitute_plan_loads_from_its_base_as_the_sliced_copy(family, tmp_path):
    from moe_specialists.models.plan_loading import kept_weight_stats, load_from_plan
    from moe_specialists.models.registry.entries import weight_stats
    from moe_specialists.models.registry.store import Registry

    base = build_tiny(tmp_path / "base", family)
    plan = substitute_plan(base, tmp_path / "plan.json")
    copy = apply_plan(tmp_path / "plan.json", tmp_path / "copy")
    want = load_causal_lm(copy).state_dict()
    got = load_from_plan(plan).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    kept = dict(zip(plan.layers, plan.kept, strict=True))
    assert kept_weight_stats(base, kept, substitute=True) == weight_stats(copy)
    assert weight_stats(copy)[1] - kept_weight_stats(base, kept)[1] == sum(
        (16 - len(k)) * (HIDDEN * 4 + (HIDDEN + (family == "gpt_oss")) * 4) for k in KEPT)  # constants + router rows
    registry = Registry(tmp_path / "registry")
    as_plan = registry.register_plan("as-plan", tmp_path / "plan.json", directions=["en-de"])
    as_copy = registry.register_dir("as-copy", copy, directions=["en-de"])
    assert (as_plan.weight_bytes, as_plan.parameters) == (as_copy.weight_bytes, as_copy.parameters)
    view = Path(as_plan.path)
    assert Plan.load(view / "plan.json").constants().keys() == plan.constants().keys()


def test_vllm_serves_a_substitute_plan_view_like_the_sliced_copy(tmp_path):
    from moe_specialists.models.plan_loading import view_of_plan
    from tests.models.test_vllm_serving import vllm_engine, vllm_greedy

    base = build_tiny(tmp_path / "base", "qwen3_moe")
    plan = substitute_plan(base, tmp_path / "plan.json", seed=2)
    copy = apply_plan(tmp_path / "plan.json", tmp_path / "copy")
    view = view_of_plan(plan, tmp_path / "views")
    with vllm_engine(copy) as llm:
        expected = vllm_greedy(llm, PROMPTS, max_new_tokens=10)
    with vllm_engine(view) as llm:
        got = vllm_greedy(llm, PROMPTS, max_new_tokens=10)
    assert got == expected


def test_vllm_routing_of_a_substituting_layer_by_hand():
    import torch.nn as nn

    from moe_specialists.models.vllm_models import SubstitutingRouter

    logits = torch.tensor([[2.0, 1.0, 0.0, 3.0]])  # experts 0, 1 kept; 2, 3 substituted by rows 0, 1
    substitutes = nn.Parameter(torch.tensor([[9.0, 9.0], [4.0, -8.0]]), requires_grad=False)
    e = math.e
    router = SubstitutingRouter(top_k=2, kept=2, renormalize=True, substitutes=substitutes)
    weights, ids = router.select_experts(torch.zeros(1, 2), logits)
    # top-2: expert 3 (e / (e + 1)) and expert 0 (1 / (e + 1)); 3 is substituted: weight 0 on expert 0
    assert ids[0].tolist() == [0, 0] and sorted(weights[0].tolist()) == pytest.approx([0.0, 1 / (e + 1)])
    torch.testing.assert_close(router.zero_expert_output, torch.tensor([[4.0, -8.0]]) * e / (e + 1))
    assert router.zero_expert_output is None  # taken once, by the MoE runner
    unnormalised = SubstitutingRouter(top_k=2, kept=2, renormalize=False, substitutes=substitutes)
    unnormalised.select_experts(torch.zeros(1, 2), logits)  # share of the softmax over all four
    z = e ** 2 + e + 1 + e ** 3
    torch.testing.assert_close(unnormalised.zero_expert_output, torch.tensor([[4.0, -8.0]]) * e ** 3 / z)


@pytest.mark.parametrize("family", FAMILIES)
def test_released_layouts_substituted_agree_between_transformers_and_vllm(family, tmp_path):
    """Qwen3-MoE as released (per-expert tensors) in fp32: the same tokens. GPT-OSS as released (MXFP4 kept
    experts, bf16: vLLM's MXFP4 backend runs bf16 only) where vLLM can serve MXFP4 (a CPU with AMX)."""
    from tests.models.test_vllm_serving import hf_greedy, require_vllm_mxfp4, vllm_engine, vllm_greedy
    from tests.released import save_released_qwen3_moe

    base = (save_released_qwen3_moe if family == "qwen3_moe" else save_released_gpt_oss)(tmp_path / "base")
    substitute_plan(base, tmp_path / "plan.json", seed=3)
    spec = apply_plan(tmp_path / "plan.json", tmp_path / "spec")
    dtype = "float32" if family == "qwen3_moe" else "bfloat16"
    expected = hf_greedy(spec, PROMPTS, max_new_tokens=8, dtype=dtype)
    if family == "gpt_oss":
        require_vllm_mxfp4()  # everything above ran; vLLM's MXFP4 half needs AMX on a CPU
    with vllm_engine(spec, dtype=dtype) as llm:
        got = vllm_greedy(llm, PROMPTS, max_new_tokens=8)
    assert got == expected


def test_the_bundled_translator_substituted_agrees_between_transformers_and_vllm(tmp_path):
    """The bundled translator (GPT-OSS family, 32 experts, top-4), half its experts substituted: greedy tokens of
    a real translation prompt, fp32, equal in both engines."""
    from transformers import AutoTokenizer

    from moe_specialists.models.prompts import render
    from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR
    from tests.models.test_vllm_serving import hf_greedy, vllm_engine, vllm_greedy

    plan = plan_from_kept(BUNDLED_MODEL_DIR, [list(range(0, 32, 2))] * 8)
    g = torch.Generator().manual_seed(4)
    plan.with_constants({lay: torch.randn(16, 256, generator=g) * 0.05 for lay in plan.layers}).save(
        tmp_path / "plan.json")
    spec = apply_plan(tmp_path / "plan.json", tmp_path / "spec")
    tokenizer = AutoTokenizer.from_pretrained(spec)
    prompts = [tokenizer(render(tokenizer, "en", "de", text), add_special_tokens=False)["input_ids"]
               for text in ("The garden is full of roses.", "We will meet at the station tomorrow.")]
    expected = hf_greedy(spec, prompts, max_new_tokens=16)
    with vllm_engine(spec, max_model_len=512) as llm:
        got = vllm_greedy(llm, prompts, max_new_tokens=16)
    assert got == expected


def test_vllm_refuses_a_specialist_whose_substitutes_disagree_with_its_config(tmp_path):
    from tests.models.test_vllm_serving import vllm_engine

    base = build_tiny(tmp_path / "base", "gpt_oss")
    substitute_plan(base, tmp_path / "plan.json")
    spec = apply_plan(tmp_path / "plan.json", tmp_path / "spec")
    config = json.loads((spec / "config.json").read_text())
    config["num_substituted_experts_per_layer"][2] = 5
    (spec / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception) as info, vllm_engine(spec):  # noqa: B017 (vLLM may wrap the error)
        pass
    err = "".join(traceback.format_exception(info.value))
    assert "layer 2" in err and "routes over 16 experts" in err and "num_substituted_experts_per_layer[2] = 5" in err
