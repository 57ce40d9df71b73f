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
from moe_specialists.pruning.evaluate import EvaluationConfig, evaluate
from moe_specialists.pruning.fleet_search import FleetConfig, search_fleet
from moe_specialists.pruning.search import Search, SearchConfig, search
from tests.pruning.conftest import TINY

pytestmark = pytest.mark.slow  # make test-fast skips it: end-to-end search jobs, each generating translations

FAST = {"limit": 20, "max_new_tokens": 24, "batch_size": 20}


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
              "registry": tmp_path / "registry", "resolution": 8, **FAST}  # whole drop levels: 5 evaluations each
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
