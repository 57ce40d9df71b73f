"""The CLI end to end on a tiny model with the FLORES dev data beside the checkout."""

import json

import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import models  # noqa: F401
from pruning.cli import app
from tests.tiny import save_tiny

runner = CliRunner()


def test_help_explains_each_job():
    out = runner.invoke(app, ["--help"]).output
    for job in ("calibrate", "plan", "apply", "prune"):
        assert job in out
    assert "Experts dropped per MoE layer" in runner.invoke(app, ["plan", "--help"]).output


def test_calibrate_plan_apply_and_prune(tmp_path, flores_dir):
    base = save_tiny("qwen3_moe", tmp_path / "base", max_shard_size="300KB")
    stats = tmp_path / "stats.safetensors"
    r = runner.invoke(
        app,
        [
            "calibrate",
            str(base),
            "--out",
            str(stats),
            "-l",
            "de,fr",
            "--direction",
            "both",
            "--data",
            str(flores_dir),
            "--limit",
            "3",
            "--no-reap",
        ],
    )
    assert r.exit_code == 0, r.output
    # one calibration serves several plans: a German en->de specialist and a multilingual one
    for name, directions in (("de", "en-de"), ("multi", "en-de,de-en,en-fr,fr-en")):
        r = runner.invoke(
            app,
            ["plan", str(stats), "--out", str(tmp_path / f"{name}.json"), "--drop", "8", "--directions", directions],
        )
        assert r.exit_code == 0, r.output
        info = json.loads(r.stdout)
        assert sum(info["experts_per_layer"]) == 4 * 8 and info["parameters"] < info["base_parameters"]
    r = runner.invoke(app, ["apply", str(tmp_path / "de.json"), "--out", str(tmp_path / "spec-de")])
    assert r.exit_code == 0, r.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "spec-de")
    assert sum(p.numel() for p in model.parameters()) == json.loads((tmp_path / "de.json").read_text())["parameters"]

    r = runner.invoke(
        app,
        [
            "prune",
            str(base),
            "--out",
            str(tmp_path / "spec-fr"),
            "-l",
            "fr",
            "--drop",
            "12",
            "--allocation",
            "uniform",
            "--data",
            str(flores_dir),
            "--limit",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["experts_per_layer"] == [4, 4, 4, 4]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "spec-fr")
    assert model.generate(torch.tensor([[5, 6]]), max_new_tokens=3, do_sample=False).shape == (1, 5)


def test_errors_are_one_clear_line(tmp_path, flores_dir):
    base = save_tiny("qwen3_moe", tmp_path / "base")
    r = runner.invoke(
        app, ["calibrate", str(base), "--out", str(tmp_path / "s"), "-l", "xx", "--data", str(flores_dir)]
    )
    assert r.exit_code == 2 and "unknown language 'xx'" in r.output
    r = runner.invoke(app, ["calibrate", str(base), "--out", str(tmp_path / "s"), "-l", "de", "--data", str(tmp_path)])
    assert r.exit_code == 2 and "no split 'dev'" in r.output
    stats = tmp_path / "stats.safetensors"
    assert (
        runner.invoke(
            app,
            [
                "calibrate",
                str(base),
                "--out",
                str(stats),
                "-l",
                "de",
                "--data",
                str(flores_dir),
                "--limit",
                "2",
                "--no-reap",
            ],
        ).exit_code
        == 0
    )
    r = runner.invoke(app, ["plan", str(stats), "--out", str(tmp_path / "p.json"), "--drop", "13"])
    assert r.exit_code == 2 and "choose an integer drop from 0 to 12" in r.output
    r = runner.invoke(app, ["plan", str(stats), "--out", str(tmp_path / "p.json"), "--drop", "4", "--ranking", "reap"])
    assert r.exit_code == 2 and "no REAP" in r.output
    r = runner.invoke(
        app, ["plan", str(stats), "--out", str(tmp_path / "p.json"), "--drop", "4", "--directions", "en-ja"]
    )
    assert r.exit_code == 2 and "no calibration statistics for ['en-ja']" in r.output
