"""`search` end to end on the bundled translator (CPU, the shipped sample, tiny limits): the plan within the
floor, found in the bisection's bound of evaluations, judged by masking exactly as its sliced copy scores,
cached, registered; byte budgets; fleets; bad input refused before any evaluation."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from moe_specialists.cli import app
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.plan import Plan
from moe_specialists.models.registry.store import Registry
from moe_specialists.pruning.budget import search_calls
from moe_specialists.pruning.calibrate import CalibrationConfig, calibrate
from moe_specialists.pruning.evaluate import EvaluationConfig, evaluate
from moe_specialists.pruning.fleet_search import FleetConfig, search_fleet
from moe_specialists.pruning.search import Search, SearchConfig, search
from moe_specialists.pruning.stats import RoutingStats

pytestmark = pytest.mark.slow  # make test-fast skips it: end-to-end search jobs, each generating translations

TINY = "models/tiny_translator"
FAST = {"limit": 20, "max_new_tokens": 24, "batch_size": 20}


@pytest.fixture(scope="module")
def stats(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("stats") / "stats.safetensors"
    return calibrate(CalibrationConfig(model=TINY, data_dir=sample_dir, languages=["de", "fr"], out=out,
                                       direction="both", limit=20))


def config(stats, sample_dir, work, **kw) -> SearchConfig:
    return SearchConfig(**{"model": TINY, "statistics": stats, "directions": ["en-de"], "data_dir": sample_dir,
                           "work_dir": work, **FAST, **kw})


def test_the_smallest_plan_within_the_floor(stats, sample_dir, tmp_path):
    registry = tmp_path / "registry"
    c = config(stats, sample_dir, tmp_path / "work", max_loss=1.0, register_name="en-de-1chrf", registry=registry)
    result = search(c)
    ch = result.chosen
    assert ch is not None and ch.loss["dev"] <= 1.0 and "devtest" in ch.loss
    assert result.evaluations <= search_calls(8, 32, 4) == 8  # not the 29 x 8 totals a full grid has
    by_total = {x.kept_total: x for x in result.candidates}
    below = [b for b in by_total if b < ch.kept_total]
    assert all(by_total[b].loss["dev"] > 1.0 for b in below if b >= max(below, default=0))  # the next one down fails
    plan = Plan.load(result.plan)
    assert sum(len(k) for k in plan.kept) == ch.kept_total and plan.recipe.directions == ["en-de"]
    # masking the parent scores what the sliced specialist scores
    sliced = apply_plan(plan, tmp_path / "sliced")
    got = evaluate(EvaluationConfig(model=sliced, directions=["en-de"], data_dir=sample_dir, split="dev", **FAST))
    assert got.directions["en-de"].chrf == pytest.approx(ch.chrf["dev"], abs=0.01)
    entry = Registry(registry).get("en-de-1chrf")
    assert entry.plan is not None and entry.directions == ["en-de"]
    report = (tmp_path / "work" / "search.md").read_text()
    assert "| kept experts | dropped experts | per layer | GB |" in report
    assert f"Chosen: {ch.kept_total} experts (the others dropped)" in report
    assert (tmp_path / "work" / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun (another floor too) measures only what is new
    again = search(c.model_copy(update={"register_name": None}))
    assert again.new_evaluations == 0 and again.chosen.kept_total == ch.kept_total


def test_the_largest_plan_within_a_byte_budget(stats, sample_dir, tmp_path):
    job = Search(config(stats, sample_dir, tmp_path / "w", max_bytes=10**9))
    # the bundled translator's bytes by hand: 8 layers of 32 experts; one expert = 3 matrices of 96 x 256 bf16
    # and its row of the router (256 bf16)
    one = 3 * 96 * 256 * 2 + 256 * 2
    assert job.bytes.per_expert == [one] * 8
    budget = job.bytes.dense + 150 * one + 100  # room for 150 experts
    result = search(config(stats, sample_dir, tmp_path / "work", max_bytes=budget, confirm_split=None))
    assert result.chosen.kept_total == 150 and result.chosen.weight_bytes <= budget
    assert result.evaluations == 1 and "dev" in result.chosen.loss


def test_bad_input_is_refused_before_any_evaluation(stats, sample_dir, tmp_path):
    work = tmp_path / "work"
    common = ["search", TINY, "--statistics", str(stats), "--work", str(work), "--data", str(sample_dir)]
    cases = {
        ("-d", "en-de", "--max-loss", "-0.5"): "may lose (>= 0)",
        ("-d", "en-de", "--max-bytes", "5MB"): "dense) weights alone need 0.009 GB",
        ("-d", "en-es", "--max-loss", "1"): "no calibration statistics for ['en-es']",
        ("-d", "en-de", "--max-loss", "1", "--limit", "12"): "12 passages per direction: too few",
        ("-d", "en-de"): "give a quality floor",
        ("-d", "en-de", "--max-loss", "1", "--dropped", "keep"): "'drop', 'substitute' or 'either'",
        ("-d", "en-de", "--max-loss", "1", "--metric", "comet"): "metric comet needs a COMET model",
    }
    for args, message in cases.items():
        res = CliRunner().invoke(app, [*common, *args])
        assert res.exit_code == 2 and message in " ".join(res.output.split()), (args, res.output)
    assert not (work / "evals").exists()


def test_a_fleet_serves_every_pair_within_the_floor(stats, sample_dir, tmp_path):
    pairs = ["en-de", "de-en"]  # candidates: one per direction and one for both
    common = {"model": TINY, "statistics": stats, "directions": pairs, "data_dir": sample_dir,
              "work_dir": tmp_path / "work", "max_loss": 1.5, "kinds": ["direction", "multilingual"],
              "registry": tmp_path / "registry", **FAST}
    roomy = search_fleet(FleetConfig(**common, gpus=1, gpu_memory="1GB", kv_cache="10MB"))
    assert roomy.problem is None and set(roomy.routes) == set(pairs)
    loss = {x["name"]: x["loss"] for x in roomy.candidates}
    assert all(loss[name][pair] <= 1.5 for pair, name in roomy.routes.items())
    assert len(roomy.serve_commands) == 1 and roomy.serve_commands[0].count("-s ") == len(roomy.gpus[0])
    assert set(Registry(tmp_path / "registry").names()) == {f"fleet-{n}" for n in roomy.gpus[0]}
    assert roomy.serve_commands[0] in (tmp_path / "work" / "fleet.md").read_text()
    tight = search_fleet(FleetConfig(**common, gpus=1, gpu_memory="50MB", kv_cache="10MB"))
    assert tight.gpus == [] and "no fleet serves every pair" in tight.problem
    assert json.loads((tmp_path / "work" / "fleet.json").read_text())["problem"] == tight.problem
    assert f"No fleet: {tight.problem}" in (tmp_path / "work" / "fleet.md").read_text()


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
    assert {key[1] for key in either.measured} == {"drop", "substitute"} and either.new_evaluations == 0  # cached
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
               confirm_split=None)
    job = Search(c, log=lambda _: None, comet=overlap)
    x = job.candidate(128, ["dev"])
    parent = job.scores(None, "dev")["en-de"]
    got = job.scores(dict(zip(job.plan(128).layers, job.plan(128).kept, strict=True)), "dev")["en-de"]
    assert x.loss["dev"] == pytest.approx(parent.comet - got.comet) and x.comet["dev"] == pytest.approx(got.comet)
    assert x.chrf["dev"] == pytest.approx(got.chrf) and sum(calls) > 0
    result = search(c, log=lambda _: None, comet=overlap)
    assert result.parent_comet["dev"] == pytest.approx(parent.comet)
    assert "loss (COMET)" in (tmp_path / "work" / "search.md").read_text()


def test_candidates_judged_in_vllm_score_as_in_transformers(stats, sample_dir, tmp_path):
    """backend vllm: the parent loads once in a vLLM engine and each candidate's experts are masked (or
    substituted) in its workers; fp32 greedy, so the scores are transformers' (the same tokens)."""
    for mode in ("drop", "substitute"):
        judged = {}
        for backend in ("transformers", "vllm"):
            job = Search(config(stats, sample_dir, tmp_path / backend, max_loss=1.0, dropped=mode, backend=backend),
                         log=lambda _: None)
            try:
                judged[backend] = job.candidate(128, ["dev"])
            finally:
                job.close()
        assert judged["vllm"].chrf["dev"] == pytest.approx(judged["transformers"].chrf["dev"], abs=0.05), mode
        assert judged["vllm"].loss["dev"] == pytest.approx(judged["transformers"].loss["dev"], abs=0.05), mode
