"""A plan evaluated on its parent inside vLLM (``models.vllm_masking``) computes what vLLM computes for the
sliced specialist: the same greedy tokens, dropped or substituted, for both families; unmasked, the parent's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from moe_specialists.models.apply import apply_plan
from moe_specialists.models.plan import plan_from_kept
from tests.models.test_substitution import KEPT, parent_constants, substitute_plan
from tests.models.test_vllm_serving import FAMILIES, PROMPTS, build_tiny, vllm_engine, vllm_greedy


@pytest.mark.parametrize("family", FAMILIES)
def test_a_masked_parent_in_vllm_generates_the_specialists_tokens(family, tmp_path: Path):
    from moe_specialists.models.vllm_masking import MASKING, experts_masked_in_vllm

    base = build_tiny(tmp_path / "base", family)
    plan = substitute_plan(base, tmp_path / "plan.json", seed=5)
    dropped = apply_plan(plan_from_kept(base, KEPT), tmp_path / "dropped")
    substituted = apply_plan(tmp_path / "plan.json", tmp_path / "substituted")
    want = {}
    for name, folder in (("dropped", dropped), ("substituted", substituted)):
        with vllm_engine(folder) as llm:
            want[name] = vllm_greedy(llm, PROMPTS, max_new_tokens=10)
    kept = dict(zip(plan.layers, plan.kept, strict=True))
    with vllm_engine(base, worker_extension_cls=MASKING, enable_prefix_caching=False) as llm:
        parent = vllm_greedy(llm, PROMPTS, max_new_tokens=10)
        with experts_masked_in_vllm(llm, kept):
            got_dropped = vllm_greedy(llm, PROMPTS, max_new_tokens=10)
        with experts_masked_in_vllm(llm, kept, parent_constants(plan)):
            got_substituted = vllm_greedy(llm, PROMPTS, max_new_tokens=10)
        again = vllm_greedy(llm, PROMPTS, max_new_tokens=10)
    assert got_dropped == want["dropped"] and got_substituted == want["substituted"]
    assert parent != want["dropped"] and again == parent  # the masks did something, and are gone


def test_masking_by_hand():
    from moe_specialists.models.vllm_masking import MaskedRouter

    class Inner:
        top_k, global_num_experts, renormalize = 2, 4, True

    router = MaskedRouter(Inner(), torch.tensor([False, True, True, True]))  # expert 0, the best, is dropped
    weights, ids = router.select_experts(torch.zeros(1, 2), torch.tensor([[3.0, 1.0, 2.0, 0.0]]))
    assert sorted(ids[0].tolist()) == [1, 2]
    e = math.e
    assert sorted(weights[0].tolist()) == pytest.approx(sorted([e / (e + 1), 1 / (e + 1)]))
