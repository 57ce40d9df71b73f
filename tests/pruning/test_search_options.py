"""The search's options on the bundled translator and the shipped sample: substituted candidates (written and
registered), ``dropped="either"``, calibrating when no statistics are given, a COMET floor, candidates judged in
vLLM, the per-layer refinement. Beside tests/pruning/test_search.py so that two workers share the search's tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from moe_specialists.models.apply import apply_plan
from moe_specialists.models.plan import Plan
from moe_specialists.models.registry.store import Registry
from moe_specialists.pruning.budget import refinement_order
from moe_specialists.pruning.evaluate import EvaluationConfig, evaluate
from moe_specialists.pruning.search import Search, SearchConfig, search
from moe_specialists.pruning.stats import RoutingStats
from tests.pruning.test_search import FAST, TINY, config

pytestmark = pytest.mark.slow  # make test-fast skips it: end-to-end search jobs, each generating translations


def test_substituted_candidates_are_measured_written_and_registered(stats, sample_dir, tmp_path):
    job = Search(config(stats, sample_dir, tmp_path / "work", max_loss=1.0, dropped="substitute"))
    counts = [len(k) for k in job.plan(128).kept]
    # each of the 128 dropped experts keeps its router row (256 bf16 values) and gets a constant (256 float32)
    assert job.weight_bytes(counts) == job.bytes.of_counts(counts) + 128 * (256 * 2 + 256 * 4)
    sub = job.candidate(128, ["dev"])
    drop = Search(config(stats, sample_dir, tmp_path / "work", max_loss=1.0)).candidate(128, ["dev"])
    assert sub.chrf["dev"] != drop.chrf["dev"]  # another model: the constants answer for the dropped experts
    either = Search(config(stats, sample_dir, tmp_path / "work", max_loss=1.0, dropped="either"))
    best = either.candidate(128, ["dev"])
    want = min((drop, sub), key=lambda x: x.loss["dev"])  # drop first: it wins a tie (fewer bytes)
    assert (best.dropped, best.chrf["dev"]) == (want.dropped, want.chrf["dev"])
    assert {key[1] for key in either.measured} == {"drop", "substitute"} and either.evals.new == 0  # cached
    result = search(config(stats, sample_dir, tmp_path / "w2", max_loss=50.0, dropped="substitute",
                           confirm_split=None, register_name="sub", registry=tmp_path / "registry"))
    plan = Plan.load(result.plan)
    assert plan.recipe.dropped == "substitute" and result.chosen.dropped == "substitute"
    assert (tmp_path / "w2" / "plan.substitutes.safetensors").is_file()
    entry = Registry(tmp_path / "registry").get("sub")
    assert entry.weight_bytes == result.chosen.weight_bytes  # the registry counts what the search counted
    old = RoutingStats.load(stats)
    for g in old.groups.values():
        g.out_sum = g.out_weight = None
    with pytest.raises(ValueError, match="substitution needs a recalibration"):
        Search(config(old.save(tmp_path / "old.safetensors"), sample_dir, tmp_path / "w4", max_loss=1.0,
                      dropped="substitute"))


def test_without_statistics_the_search_calibrates_first_then_reuses_them(sample_dir, tmp_path):
    logs: list[str] = []
    c = SearchConfig(model=TINY, directions=["en-de", "de-en"], data_dir=sample_dir, work_dir=tmp_path / "work",
                     max_bytes="30MB", calibration_limit=20, confirm_split=None, **FAST)
    result = search(c, log=logs.append)
    assert set(RoutingStats.load(tmp_path / "work" / "stats.safetensors").groups) == {"en-de", "de-en"}
    assert any("calibrating" in x and "['de'] (both en), 20 dev passages each" in x for x in logs), logs
    assert result.plan is not None and result.chosen.weight_bytes <= 30e6
    logs.clear()
    search(c, log=logs.append)
    assert any("calibrated before" in x for x in logs) and not any("calibrating" in x for x in logs)


def test_a_comet_floor_judges_candidates_by_the_comet_scorer(stats, sample_dir, tmp_path):
    """metric comet: the loss is in the scorer's points (a stand-in scorer here, word overlap with the reference:
    xCOMET needs the hub and a GPU-size model); chrF is still reported, and chrF-only caches are not reused."""
    calls = []

    def overlap(sources, hyps, refs):
        calls.append(len(hyps))
        return [len(set(h.split()) & set(r.split())) / max(len(r.split()), 1) for h, r in zip(hyps, refs, strict=True)]

    with pytest.raises(ValueError, match="metric comet needs a COMET model"):
        config(stats, sample_dir, tmp_path / "w", max_loss=1.0, metric="comet")
    c = config(stats, sample_dir, tmp_path / "work", max_loss=5.0, metric="comet", comet_model="stand-in",
               confirm_split=None, resolution=8)  # whole drop levels: the metric is tested, not the bisection
    job = Search(c, log=lambda _: None, comet=overlap)
    x = job.candidate(128, ["dev"])
    parent = job.evals.scores(None, "dev")["en-de"]
    got = job.evals.scores(dict(zip(job.plan(128).layers, job.plan(128).kept, strict=True)), "dev")["en-de"]
    assert x.loss["dev"] == pytest.approx(parent.comet - got.comet) and x.comet["dev"] == pytest.approx(got.comet)
    assert x.chrf["dev"] == pytest.approx(got.chrf) and sum(calls) > 0
    result = search(c, log=lambda _: None, comet=overlap)
    assert result.parent_comet["dev"] == pytest.approx(parent.comet)
    assert "loss (COMET)" in (tmp_path / "work" / "search.md").read_text()


def test_candidates_judged_in_vllm_score_as_in_transformers(stats, sample_dir, tmp_path):
    """backend vllm: the parent loads once in a vLLM engine and each candidate's experts are masked (or
    substituted) in its workers; fp32 greedy, so the scores are transformers' (the same tokens)."""
    judged = {}  # substituted (the masking alone, in vLLM: tests/models/test_vllm_masking.py)
    for backend in ("transformers", "vllm"):
        job = Search(config(stats, sample_dir, tmp_path / backend, max_loss=1.0, dropped="substitute",
                            backend=backend), log=lambda _: None)
        try:
            judged[backend] = job.candidate(128, ["dev"])
        finally:
            job.close()
    assert judged["vllm"].chrf["dev"] == pytest.approx(judged["transformers"].chrf["dev"], abs=0.05)
    assert judged["vllm"].loss["dev"] == pytest.approx(judged["transformers"].loss["dev"], abs=0.05)


def test_refinement_offers_each_layer_fewer_experts_and_keeps_what_stays_within_the_floor(stats, sample_dir,
                                                                                          tmp_path):
    """The greedy pass by hand: losses made up per candidate (the second layer tried is over the floor)."""
    job = Search(config(stats, sample_dir, tmp_path / "work", max_loss=1.0, refine=3, refine_step=4))
    start = job.allocation(192)
    first, second, third, *_ = refinement_order(job.plan(192).scores, start, 4, 4)
    tried: list[tuple[int, ...]] = []

    def candidate(counts, splits):
        assert splits == ["dev"]
        tried.append(counts)
        return SimpleNamespace(loss={"dev": 1.5 if counts[second] < start[second] else 1.0})

    job.candidate = candidate
    minus = lambda counts, *slots: tuple(n - 4 if i in slots else n for i, n in enumerate(counts))  # noqa: E731
    assert job.refine(start) == minus(start, first, third)
    assert tried == [minus(start, first), minus(start, first, second), minus(start, first, third)]  # 3 = refine


def test_a_refined_plan_records_its_counts_and_its_sliced_copy_scores_as_judged(stats, sample_dir, tmp_path):
    result = search(config(stats, sample_dir, tmp_path / "work", max_loss=2.0, refine=2, refine_step=2,
                           confirm_split=None))
    bisected = [x for x in result.candidates if x.experts_per_layer == list(Search(config(
        stats, sample_dir, tmp_path / "w", max_loss=2.0)).allocation(x.kept_total))]
    refined = [x for x in result.candidates if x not in bisected]
    assert len(refined) == 2 and len(bisected) <= 8  # one evaluation per layer tried, after the bisection
    ch = result.chosen
    assert ch.loss["dev"] <= 2.0 and ch.kept_total <= min(x.kept_total for x in bisected if x.loss["dev"] <= 2.0)
    plan = Plan.load(result.plan)
    assert [len(k) for k in plan.kept] == ch.experts_per_layer
    assert plan.recipe.kept_per_layer == (ch.experts_per_layer if ch in refined else None)
    # a hand-made allocation: two experts fewer in the first layer, two more in the last, judged masked and sliced
    job = Search(config(stats, sample_dir, tmp_path / "work", max_loss=2.0))
    counts = list(job.allocation(160))
    counts[0], counts[-1] = counts[0] - 2, counts[-1] + 2
    x = job.candidate(tuple(counts), ["dev"])
    plan = job.plan(tuple(counts), "drop")
    assert plan.recipe.kept_per_layer == counts and x.experts_per_layer == counts
    sliced = apply_plan(plan, tmp_path / "sliced")
    got = evaluate(EvaluationConfig(model=sliced, directions=["en-de"], data_dir=sample_dir, split="dev", **FAST))
    assert got.directions["en-de"].chrf == pytest.approx(x.chrf["dev"], abs=0.01)
