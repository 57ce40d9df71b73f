"""Typed job configs: refused before any model loads, with messages that say how to fix; YAML files under the
CLI's options."""

import json

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from moe_specialists.cli import app
from moe_specialists.pruning.calibrate import CalibrationConfig
from moe_specialists.pruning.config import comma_list, describe, read_config_file
from moe_specialists.pruning.evaluate import EvaluationConfig
from moe_specialists.pruning.recover import RecoveryConfig
from moe_specialists.pruning.sweep import SweepConfig
from tests.tiny import save_tiny


def test_comma_lists_and_config_files(tmp_path):
    assert comma_list(" de, fr ,") == ["de", "fr"] and comma_list(["de"]) == ["de"]
    assert CalibrationConfig(model="m", out="s", languages="de,fr").languages == ["de", "fr"]
    assert EvaluationConfig(model="m", directions="en-de", seeds="0,1").seeds == [0, 1]
    f = tmp_path / "job.yaml"
    f.write_text("max-new-tokens: 12\nlanguages: [de, fr]\n")
    assert read_config_file(f) == {"max_new_tokens": 12, "languages": ["de", "fr"]}
    f.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="YAML mapping of option names"):
        read_config_file(f)


@pytest.mark.parametrize(
    ("cls", "fields", "why"),
    [
        (CalibrationConfig, {"model": "m", "out": "s", "languages": "xx"}, "unknown language 'xx'"),
        (CalibrationConfig, {"model": "m", "out": "s", "languages": "de", "batchsize": 4}, "batchsize"),
        (CalibrationConfig, {"model": "m", "out": "s", "languages": "de", "dtype": "float8"}, "dtype"),
        (EvaluationConfig, {"model": "m", "directions": "en-en"}, "two different languages"),
        (EvaluationConfig, {"model": "m", "directions": "en-de", "temperature": 0.7, "seeds": []}, "at least one seed"),
        (RecoveryConfig, {"specialist": "s", "out": "o", "distilled": "d.jsonl"}, "goes with mode 'distill'"),
        (RecoveryConfig, {"specialist": "s", "out": "o", "lr": 0}, "lr"),
        (RecoveryConfig, {"specialist": "s", "out": "o", "experts_implementation": "fast"}, "grouped_mm"),
        (SweepConfig, {"model": "m", "work_dir": "w", "methods": "magic"}, "unknown methods"),
    ],
)
def test_impossible_settings_are_refused(cls, fields, why):
    with pytest.raises(ValidationError) as e:
        cls(**fields)
    assert why in describe(e.value)


def test_cli_config_file_under_the_options(tmp_path, sample_dir):
    """evaluate --config: the file's settings, with the options given on the command line winning."""
    model = save_tiny("qwen3_moe", tmp_path / "m")
    job = tmp_path / "eval.yaml"
    job.write_text(f"model: {model}\ndirections: en-de\ndata_dir: {sample_dir}\nlimit: 3\nmax-new-tokens: 6\n")
    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["evaluate", "--config", str(job), "--limit", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["directions"]["en-de"]["n"] == 2  # --limit 2 over the file's 3
    assert res["max_new_tokens"] == 6 and res["config"]["limit"] == 2 and res["config"]["model"] == str(model)
    job.write_text(f"model: {model}\ndirections: en-de\nbatchsize: 4\n")
    r = CliRunner().invoke(app, ["evaluate", "--config", str(job)])
    assert r.exit_code == 2 and "batchsize: Extra inputs are not permitted" in r.output
