"""A plan evaluated by masking its dropped experts out of the parent's routers equals the sliced specialist:
the routing by hand, and the logits of both released families."""

from __future__ import annotations

import math

import pytest
import torch

from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.masking import experts_masked, masked_routing
from moe_specialists.models.plan import plan_from_kept
from moe_specialists.models.pruned import load_causal_lm
from tests.models.test_vllm_serving import FAMILIES, PROMPTS, build_tiny

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
