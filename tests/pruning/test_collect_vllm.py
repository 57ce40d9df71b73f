"""The vLLM statistics backend agrees with the transformers collector on the same token sequences.

One engine per family on a tiny NON-uniform specialist (16, 6, 11, 4 of 16 experts: columns past a layer's
count stay 0), several groups plus plain passages; routing mass within 1e-4, frequency and counts exact.
Generated routing records the prompt and vLLM's own translation while it generates. ``assert_same_stats`` is
the comparison (and its tolerance) that tests/pruning/test_calibrate_vllm.py reuses for the CLI's two backends.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moe_specialists.pruning.data import CalibrationSequence
from moe_specialists.pruning.stats import RoutingStats
from tests.models.test_vllm_serving import COUNTS, FAMILIES, build_tiny, byte_tokenizer, vllm_engine

pytestmark = pytest.mark.slow  # make test-fast skips it: statistics collected inside vLLM engines end to end

TEXTS = [
    "Translate this passage from English to German.\n\nThe cat sat on the mat.",
    "Hallo Welt, wie geht es dir heute?",
    "A longer passage, so that one batch mixes short and long sequences: " * 3,
    "Kurz.",
]


def sequences() -> list[CalibrationSequence]:
    seqs = [CalibrationSequence("en-de", t, index=i, source="en", target="de", source_text=t[-20:])
            for i, t in enumerate(TEXTS)]
    seqs += [CalibrationSequence("de-en", t[::-1], index=i, source="de", target="en", source_text=t)
             for i, t in enumerate(TEXTS[:3])]
    seqs += [CalibrationSequence("de", t.upper(), passage=True, index=i) for i, t in enumerate(TEXTS)]
    return seqs


def assert_same_stats(got: RoutingStats, ref: RoutingStats) -> None:
    """The vLLM collector's statistics ``got`` agree with the transformers collector's ``ref`` on the same
    sequences: the same groups, sequence and token counts and selections exactly, routing mass (per group and
    per plain passage) within 1e-4 (float32 router logits in two engines)."""
    assert got.layers == ref.layers and got.num_experts == ref.num_experts
    assert got.header["collector"] == "vllm" and not got.header["has_reap"]
    assert got.header["data_fingerprint"] == ref.header["data_fingerprint"]
    assert sorted(got.groups) == sorted(ref.groups)
    for name, g in ref.groups.items():
        h = got.groups[name]
        assert (h.num_sequences, h.num_tokens) == (g.num_sequences, g.num_tokens), name
        torch.testing.assert_close(h.mass_sum, g.mass_sum, atol=1e-4, rtol=0)
        torch.testing.assert_close(h.select, g.select, atol=0, rtol=0)
    assert sorted(got.passages) == sorted(ref.passages)
    for lang, q in ref.passages.items():
        torch.testing.assert_close(got.passages[lang], q, atol=1e-4, rtol=0)


def test_router_weights_by_hand() -> None:
    from moe_specialists.pruning.collect_vllm import router_weights

    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    idx, w = router_weights(logits, 2, renormalise=True)
    assert idx.tolist() == [[3, 2]]
    assert torch.allclose(w, torch.tensor([[4 / 7, 3 / 7]]))
    _, w = router_weights(logits, 2, renormalise=False)
    assert torch.allclose(w, torch.tensor([[0.4, 0.3]]))


@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_stats_match_transformers(tmp_path: Path, family: str) -> None:
    from transformers import AutoModelForCausalLM

    from moe_specialists.models.prompts import render
    from moe_specialists.pruning.collect import collect_transformers
    from moe_specialists.pruning.collect_vllm import collect_vllm, stats_engine_args

    path = build_tiny(tmp_path / "m", family, COUNTS, seed=1)
    tok = byte_tokenizer()
    seqs = sequences()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ref = collect_transformers(model, tok, seqs, batch_size=3, reap=False, progress=False)
    del model
    # small steps: the long sequences' prefill is chunked over several forward passes. GPT-OSS runs the
    # engine core in its own process as users do (the statistics cross a process boundary).
    in_process = family == "qwen3_moe"
    with vllm_engine(path, in_process, max_num_batched_tokens=64, **stats_engine_args()) as llm:
        got = collect_vllm(llm, tok, seqs, batch_size=4, progress=False)
        gen = collect_vllm(llm, tok, seqs[:2], routing="generated", max_new_tokens=5, progress=False)

    assert_same_stats(got, ref)
    assert got.num_experts == 16 and sorted(got.groups) == ["de-en", "en-de"] and list(got.passages) == ["de"]
    assert got.header["routing"] == "reference" and gen.header["routing"] == "generated"
    for h in got.groups.values():
        for slot, c in enumerate(COUNTS):  # a pruned layer never routes past its count
            assert h.mass_sum[slot, c:].abs().sum() == 0

    # generated routing: every token the model read (the prompt and all generated tokens but the last)
    g = gen.groups["en-de"]
    prompts = [tok(render(tok, "en", "de", s.source_text), add_special_tokens=False)["input_ids"] for s in seqs[:2]]
    assert g.num_sequences == 2 and g.num_tokens == sum(len(p) + 5 - 1 for p in prompts)
    torch.testing.assert_close(g.mass_sum.sum(1), torch.full((len(COUNTS),), 2.0, dtype=torch.float64))


def test_engine_without_hooks_is_refused(tmp_path: Path) -> None:
    """An engine config that would miss tokens is named with its fixes (no engine needs to start)."""
    from vllm.engine.arg_utils import EngineArgs

    from moe_specialists.pruning.collect_vllm import stats_engine_args, stats_engine_problems

    path = build_tiny(tmp_path / "m", "qwen3_moe", COUNTS)
    plain = EngineArgs(str(path), skip_tokenizer_init=True, enable_prefix_caching=True).create_engine_config()
    problems = " ".join(stats_engine_problems(plain))
    for fix in ("enforce_eager=True", "enable_prefix_caching=False", "worker_extension_cls"):
        assert fix in problems
    ready = EngineArgs(str(path), skip_tokenizer_init=True, **stats_engine_args()).create_engine_config()
    assert stats_engine_problems(ready) == []
