"""`prune`: the plan of the three steps, nothing overwritten unless asked, everything checked before calibrating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_specialists.cli import app
from moe_specialists.models.plan import Plan
from moe_specialists.pruning.prune import PruneConfig, prune
from tests.tiny import save_tiny

runner = CliRunner()


def cli(*args, code: int = 0):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == code, r.output
    return r


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_tiny("qwen3_moe", tmp_path_factory.mktemp("base") / "tiny")


def test_prune_makes_the_plan_of_the_three_steps(tmp_path, base):
    common = ["-l", "de", "--direction", "both", "--data", "sample", "--limit", 3]
    cli("calibrate", base, "--out", tmp_path / "s.safetensors", *common)
    cli("plan", tmp_path / "s.safetensors", "--out", tmp_path / "steps.json", "--drop", 6)
    r = cli("prune", base, "--out", tmp_path / "spec", *common, "--drop", 6)
    assert json.loads(r.stdout)["statistics"] == str(tmp_path / "spec.stats.safetensors")
    three, one = Plan.load(tmp_path / "steps.json"), Plan.load(tmp_path / "spec" / "plan.json")
    assert one.kept == three.kept and one.recipe == three.recipe
    assert one.recipe.directions == ["de-en", "en-de"]


def test_existing_outputs_are_refused_before_calibrating(tmp_path, base):
    out = tmp_path / "spec"
    out.mkdir()
    r = cli("prune", base, "--out", out, "-l", "de", "--drop", 6, "--data", "sample", "--limit", 2, code=2)
    assert f"{out} exists: choose another --out, or pass --overwrite" in r.output
    assert not (tmp_path / "spec.stats.safetensors").exists(), "calibrated although the output was refused"
    cli("prune", base, "--out", out, "-l", "de", "--drop", 6, "--data", "sample", "--limit", 2, "--overwrite")
    assert (out / "config.json").is_file()


def test_a_taken_name_and_impossible_settings_are_refused_before_calibrating(tmp_path, base):
    registry = tmp_path / "reg"
    job = dict(model=str(base), languages=["de"], drop=6, data_dir="sample", limit=2, registry=registry)
    prune(PruneConfig(out=tmp_path / "a", register_name="tiny-de", **job))
    with pytest.raises(FileExistsError, match="'tiny-de' is already registered"):
        prune(PruneConfig(out=tmp_path / "b", register_name="tiny-de", **job))
    assert not (tmp_path / "b.stats.safetensors").exists()
    with pytest.raises(ValueError, match="plan_only registers the plan: give --register NAME"):
        PruneConfig(out=tmp_path / "c", plan_only=True, **job)
    with pytest.raises(ValueError, match="ranking"):
        PruneConfig(out=tmp_path / "c", ranking="magic", **job)


def test_prune_reads_a_config_file_under_the_options(tmp_path, base):
    settings = tmp_path / "job.yaml"
    settings.write_text(f"model: {base}\nlanguages: de\ndrop: 6\ndata_dir: sample\nlimit: 2\n")
    r = cli("prune", "--config", settings, "--out", tmp_path / "spec", "--drop", 4)
    assert sum(json.loads(r.stdout)["experts_per_layer"]) == 4 * (16 - 4), "the option wins over the file's drop"
