"""The CLI end to end on a tiny model with the FLORES dev data beside the checkout."""

import json

import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.cli import app
from tests.tiny import save_tiny

runner = CliRunner()


def cli(*args, ok: bool = True):
    r = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output
    return r


def test_help_explains_each_job():
    out = cli("--help").output
    for job in ("calibrate", "plan", "apply", "prune", "registry"):
        assert job in out
    assert "Experts dropped per MoE layer" in cli("plan", "--help").output


def test_calibrate_plan_apply_and_prune(tmp_path, sample_dir):
    base = save_tiny("qwen3_moe", tmp_path / "base", max_shard_size="300KB")
    stats = tmp_path / "stats.safetensors"
    cli("calibrate", base, "--out", stats, "-l", "de,fr", "--direction", "both", "--data", sample_dir,
        "--limit", 3, "--no-reap")
    # one calibration serves several plans: a German en->de specialist and a multilingual one
    for name, directions in (("de", "en-de"), ("multi", "en-de,de-en,en-fr,fr-en")):
        r = cli("plan", stats, "--out", tmp_path / f"{name}.json", "--drop", 8, "--directions", directions)
        info = json.loads(r.stdout)
        assert sum(info["experts_per_layer"]) == 4 * 8 and info["parameters"] < info["base_parameters"]
    cli("apply", tmp_path / "de.json", "--out", tmp_path / "spec-de")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "spec-de")
    planned = json.loads((tmp_path / "de.json").read_text())["parameters"]
    assert sum(p.numel() for p in model.parameters()) == planned

    registry = tmp_path / "registry"
    r = cli("prune", base, "--out", tmp_path / "spec-fr", "-l", "fr", "--drop", 12, "--allocation", "uniform",
            "--data", sample_dir, "--limit", 2, "--register", "tiny-fr", "--registry", registry)
    assert json.loads(r.stdout)["experts_per_layer"] == [4, 4, 4, 4]
    entry = json.loads(cli("registry", "--root", registry, "show", "tiny-fr").stdout)
    assert entry["directions"] == ["en-fr"] and entry["experts_per_layer"] == [4, 4, 4, 4]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "spec-fr")
    assert model.generate(torch.tensor([[5, 6]]), max_new_tokens=3, do_sample=False).shape == (1, 5)

    # plan-only: the plan is registered (served from the base), no sliced copy is written
    r = cli("prune", base, "--out", tmp_path / "plan-fr", "-l", "fr", "--drop", 12, "--allocation", "uniform",
            "--data", sample_dir, "--limit", 2, "--register", "tiny-fr-plan", "--registry", registry, "--plan-only")
    assert json.loads(r.stdout)["specialist"] == str(tmp_path / "plan-fr.plan.json")
    assert not (tmp_path / "plan-fr").exists()
    plan_entry = json.loads(cli("registry", "--root", registry, "show", "tiny-fr-plan").stdout)
    assert plan_entry["source"] == "plan" and plan_entry["weight_bytes"] == entry["weight_bytes"]
    assert plan_entry["experts_per_layer"] == [4, 4, 4, 4]
    r = cli("prune", base, "--out", tmp_path / "y", "-l", "fr", "--drop", 4, "--plan-only", ok=False)
    assert r.exit_code == 2 and "--register NAME" in r.output


def test_errors_are_one_clear_line(tmp_path, sample_dir):
    base = save_tiny("qwen3_moe", tmp_path / "base")
    r = cli("calibrate", base, "--out", tmp_path / "s", "-l", "xx", "--data", sample_dir, ok=False)
    assert r.exit_code == 2 and "unknown language 'xx'" in r.output
    r = cli("calibrate", base, "--out", tmp_path / "s", "-l", "de", "--data", tmp_path, ok=False)
    assert r.exit_code == 2 and "no split 'dev'" in r.output
    stats = tmp_path / "stats.safetensors"
    cli("calibrate", base, "--out", stats, "-l", "de", "--data", sample_dir, "--limit", 2, "--no-reap")
    r = cli("plan", stats, "--out", tmp_path / "p.json", "--drop", 13, ok=False)
    assert r.exit_code == 2 and "choose an integer drop from 0 to 12" in r.output
    r = cli("plan", stats, "--out", tmp_path / "p.json", "--drop", 4, "--ranking", "reap", ok=False)
    assert r.exit_code == 2 and "no REAP" in r.output
    r = cli("plan", stats, "--out", tmp_path / "p.json", "--drop", 4, "--directions", "en-ja", ok=False)
    assert r.exit_code == 2 and "no calibration statistics for ['en-ja']" in r.output
    r = cli("prune", base, "--out", tmp_path / "x", "-l", "de", "--drop", 4, "--register", "../evil", ok=False)
    assert r.exit_code == 2 and "evil" in r.output and not (tmp_path / "x").exists()


def test_an_unusable_device_is_refused_before_anything_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    for job in (["evaluate", tmp_path, "-d", "en-de"], ["recover", tmp_path, "--out", tmp_path / "r"],
                ["calibrate", tmp_path, "--out", tmp_path / "s", "-l", "de"]):  # fmt: skip
        for device, why in (("cuda", "sees no CUDA GPU"), ("gpu", "is not a torch device")):
            r = cli(*job, "--device", device, ok=False)
            said = " ".join(r.output.replace("│", " ").split())  # the message may wrap inside a box
            assert r.exit_code == 2 and why in said, r.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_a_substitute_plan_takes_its_constants_from_the_mean_outputs(tmp_path, sample_dir):
    from moe_specialists.models.plan import Plan
    from moe_specialists.pruning.stats import RoutingStats

    base = save_tiny("gpt_oss", tmp_path / "base")
    stats, old = tmp_path / "stats.safetensors", tmp_path / "old.safetensors"
    cli("calibrate", base, "--out", stats, "-l", "de", "--data", sample_dir, "--limit", 3)
    cli("plan", stats, "--out", tmp_path / "de.plan.json", "--drop", 8, "--dropped", "substitute")
    plan = Plan.load(tmp_path / "de.plan.json")
    means = RoutingStats.load(stats).mean_outputs(["en-de"])
    for slot, (layer, dropped) in enumerate(zip(plan.layers, plan.dropped(), strict=True)):
        torch.testing.assert_close(plan.constants()[layer], means[slot, dropped], rtol=0, atol=0)
    cli("apply", tmp_path / "de.plan.json", "--out", tmp_path / "spec")
    config = json.loads((tmp_path / "spec" / "config.json").read_text())
    assert [c + s for c, s in zip(config["num_experts_per_layer"], config["num_substituted_experts_per_layer"],
                                  strict=True)] == [16] * 4

    cli("calibrate", base, "--out", old, "-l", "de", "--data", sample_dir, "--limit", 2, "--no-reap")
    r = cli("plan", old, "--out", tmp_path / "x.json", "--drop", 8, "--dropped", "substitute", ok=False)
    assert r.exit_code != 0 and "substitution needs a recalibration" in r.output and not (tmp_path / "x.json").exists()
    r = cli("plan", stats, "--out", tmp_path / "x.json", "--drop", 8, "--dropped", "constant", ok=False)
    assert r.exit_code != 0 and "'drop' or 'substitute'" in r.output
