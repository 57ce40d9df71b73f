"""calibrate -> plan -> apply on checkpoints in the released layouts (GPT-OSS with MXFP4 experts, Qwen3-MoE
with per-expert tensors, three shards each), then transformers and vLLM (the CPU build; its MXFP4 backend for
GPT-OSS) give the same greedy tokens on the specialist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moe_specialists.models.apply import apply_plan
from moe_specialists.models.plan import Recipe
from moe_specialists.pruning.calibrate import CalibrationConfig, calibrate
from moe_specialists.pruning.plan import make_plan
from moe_specialists.pruning.stats import RoutingStats
from tests.models.test_vllm_serving import hf_greedy, require_vllm_mxfp4, vllm_engine, vllm_greedy
from tests.released import save_released_gpt_oss, save_released_qwen3_moe

SAVE = {"gpt_oss": save_released_gpt_oss, "qwen3_moe": save_released_qwen3_moe}
# vLLM's MXFP4 backend runs bf16 only ("Supported dtypes: [torch.bfloat16]"); Qwen3 in fp32, the exact oracle
DTYPE = {"gpt_oss": "bfloat16", "qwen3_moe": "float32"}
PROMPTS = [[5, 17, 42, 99, 3], [200, 201, 7, 7, 7, 150, 64, 12, 88, 31, 19], list(range(30, 70))]


@pytest.mark.parametrize("family", ["gpt_oss", "qwen3_moe"])
def test_calibrate_plan_apply_then_transformers_and_vllm_agree(tmp_path, family, sample_dir):
    base = SAVE[family](tmp_path / "base")
    stats = calibrate(CalibrationConfig(model=base, data_dir=sample_dir, languages=["de"],
                                        out=tmp_path / "stats.safetensors", limit=4, batch_size=4, reap=False))
    plan = make_plan(RoutingStats.load(stats), Recipe(drop=8, directions=["en-de"]))
    spec = apply_plan(plan, tmp_path / "spec")
    config = json.loads((spec / "config.json").read_text())
    assert sum(config["num_experts_per_layer"]) == 4 * 16 - 4 * 8
    assert ("quantization_config" in config) == (family == "gpt_oss")
    expected = hf_greedy(spec, PROMPTS, 8, DTYPE[family])
    if family == "gpt_oss":
        require_vllm_mxfp4()  # everything above ran; vLLM's MXFP4 half needs AMX on a CPU
    with vllm_engine(spec, dtype=DTYPE[family]) as llm:
        got = vllm_greedy(llm, PROMPTS, max_new_tokens=8)
    if family == "qwen3_moe":  # fp32: the same tokens
        assert got == expected
        return
    # bf16 (the MXFP4 backend's only dtype): two bf16 implementations may break a near-tie differently. Each of
    # vLLM's tokens must be transformers' argmax on vLLM's own prefix, up to 4 bf16 ulps of the largest logit.
    assert [g[0] for g in got] == [e[0] for e in expected]
    for prompt, tokens, gaps in zip(PROMPTS, got, hf_gaps(spec, PROMPTS, got), strict=True):
        assert all(gap <= tol for gap, tol in gaps), (prompt, tokens, gaps)


def hf_gaps(path: Path, prompts: list[list[int]], tokens: list[list[int]]) -> list[list[tuple[float, float]]]:
    """Per generated step: (max logit - logit of the given token, 4 bf16 ulps of max |logit|), teacher-forced."""
    from moe_specialists.models.pruned import load_causal_lm

    model = load_causal_lm(path, "bfloat16").eval()
    out = []
    with torch.no_grad():
        for p, t in zip(prompts, tokens, strict=True):
            logits = model(torch.tensor([p + t])).logits[0, len(p) - 1 : len(p) - 1 + len(t)].float()
            chosen = logits.gather(1, torch.tensor(t)[:, None])[:, 0]
            tol = 4 * 2.0**-8 * logits.abs().amax(-1)
            out.append(list(zip((logits.amax(-1) - chosen).tolist(), tol.tolist(), strict=True)))
    return out
