"""A plan evaluated by masking its dropped experts out of the parent's routers equals the sliced specialist:
the routing by hand, and the logits of both released families. Substitution by hand, and exact where a dropped
expert's output is in fact a constant."""

from __future__ import annotations

import math

import pytest
import torch

from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.masking import experts_masked, experts_substituted, masked_routing, substituted_routing
from moe_specialists.models.plan import plan_from_kept
from moe_specialists.models.pruned import load_causal_lm
from moe_specialists.pruning.collect import collect_transformers
from moe_specialists.pruning.data import CalibrationSequence
from tests.models.test_vllm_serving import FAMILIES, PROMPTS, build_tiny
from tests.tiny import build_model, tiny_tokenizer

KEPT = [[0, 3, 5, 7, 9, 11, 13, 15], [1, 2, 3, 4, 5, 6], list(range(12)), [2, 4, 6, 8]]


def test_masked_routing_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    allowed = torch.tensor([False, True, True, True])  # expert 0, the best, is dropped
    masked, weights, indices = masked_routing(logits, allowed, top_k=2)
    assert masked[0, 0] == float("-inf") and masked[0, 1:].tolist() == [1.0, 2.0, 0.0]
    assert indices.tolist() == [[2, 1]]
    e = math.exp(1.0)  # softmax of (2, 1): e / (e + 1), 1 / (e + 1)
    assert weights[0].tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_masked_parent_computes_what_the_sliced_specialist_computes(family, tmp_path):
    base = build_tiny(tmp_path / "base", family)
    plan = plan_from_kept(base, KEPT)
    sliced = load_causal_lm(apply_plan(plan, tmp_path / "copy")).eval()
    parent = load_causal_lm(base).eval()
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        full = parent(ids).logits
        with experts_masked(parent, adapter_for(parent.config), dict(zip(plan.layers, plan.kept, strict=True))):
            masked = parent(ids).logits
        after = parent(ids).logits
        want = sliced(ids).logits
    torch.testing.assert_close(masked, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, want, atol=1e-3)  # the plan matters: the mask did something
    torch.testing.assert_close(after, full, rtol=0, atol=0)  # and is gone after the block


def test_substituted_routing_by_hand():
    weights = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    indices = torch.tensor([[0, 2], [1, 2]])
    allowed = torch.tensor([True, True, False])  # expert 2 dropped, answered by [4, -8]
    constants = torch.tensor([[9.0, 9.0], [9.0, 9.0], [4.0, -8.0]])
    kept, part = substituted_routing(weights, indices, allowed, constants)
    assert kept.tolist() == [[0.75, 0.0], [0.5, 0.0]]  # the full top-k, the dropped weight zeroed, not renormalised
    assert part.tolist() == [[1.0, -2.0], [2.0, -4.0]]  # 0.25 * [4, -8], 0.5 * [4, -8]


def test_substituting_an_expert_that_is_a_constant_changes_nothing():
    """GPT-OSS experts have biases: with its weights zeroed, expert e answers the same vector for every token.
    Calibration measures that vector as its mean output, and the parent with e substituted computes exactly the
    parent's logits, where dropping e (routing renormalised over the rest) does not."""
    model, tok = build_model("gpt_oss", layers=2, experts=8, top_k=2), tiny_tokenizer()
    dropped = [1, 4, 6]
    adapter = adapter_for(model.config)
    with torch.no_grad():
        for layer in adapter.moe_layers(model.config):
            experts = adapter.experts(model, layer)
            experts.gate_up_proj[dropped] = 0
            experts.down_proj[dropped] = 0
    texts = ["Guten Morgen, wie geht es dir?", "Das Wetter ist heute schön.", "Ich lese ein Buch."]
    stats = collect_transformers(model, tok, [CalibrationSequence("en-de", t) for t in texts], batch_size=2,
                                 progress=False)
    means = stats.mean_outputs(["en-de"])
    layers = adapter.moe_layers(model.config)
    for slot, layer in enumerate(layers):  # the constant: the expert's output bias, as measured
        selected = stats.groups["en-de"].select[slot, dropped] > 0
        assert selected.any()
        got = means[slot, dropped][selected]
        torch.testing.assert_close(got, adapter.experts(model, layer).down_proj_bias[dropped][selected].float())
    kept = {layer: [e for e in range(8) if e not in dropped] for layer in layers}
    constants = {layer: means[slot] for slot, layer in enumerate(layers)}
    ids = tok("Ein ganz anderer Satz, den die Kalibrierung nie gesehen hat.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = model(ids).logits
        with experts_substituted(model, adapter, kept, constants):
            substituted = model(ids).logits
        with experts_masked(model, adapter, kept):
            masked = model(ids).logits
        after = model(ids).logits
    torch.testing.assert_close(substituted, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(masked, full, atol=1e-3)
    torch.testing.assert_close(after, full, rtol=0, atol=0)
