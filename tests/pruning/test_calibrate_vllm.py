"""`moe-specialists calibrate --backend vllm`: statistics collected inside the real vLLM CPU build, from the
command line, agree with the transformers backend's on the same base and FLORES data, for both routings
(teacher forcing on the reference, and the model's own greedy translation), and `plan` works on them.
Impossible settings are refused before anything loads (the model path does not even exist there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_specialists.cli import app
from moe_specialists.pruning.stats import RoutingStats
from tests.pruning.test_collect_vllm import assert_same_stats
from tests.tiny import save_tiny

pytestmark = pytest.mark.slow  # make test-fast skips it: calibration inside vLLM engines end to end

runner = CliRunner()


def said(r) -> str:
    """The command's output on one line (typer may wrap a message inside a box)."""
    return " ".join(r.output.replace("│", " ").split())


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (["--backend", "vllm", "--reap"], "REAP needs the transformers backend"),
        (["--backend", "vllm", "--reap"], "leave out --reap, or use --backend transformers"),
        (["--tensor-parallel-size", "2"], "tensor_parallel_size 2 needs --backend vllm"),
        (["--backend", "tgi"], "backend: Input should be 'transformers' or 'vllm'"),
        (["--routing", "teacher"], "routing: Input should be 'generated' or 'reference'"),
        (["--backend", "vllm", "--tensor-parallel-size", "0"], "tensor_parallel_size: Input should be"),
    ],
)
def test_impossible_calibrations_are_refused_before_loading(tmp_path: Path, options: list[str], why: str) -> None:
    missing = tmp_path / "no-such-model"  # would fail later, with another message, if anything loaded
    r = runner.invoke(app, ["calibrate", str(missing), "--out", str(tmp_path / "s"), "-l", "de", *options])
    assert r.exit_code == 2 and why in said(r), r.output
    assert not (tmp_path / "s").exists()


def test_vllm_takes_no_transformers_device_index(tmp_path: Path) -> None:
    from moe_specialists.pruning.calibrate import CalibrationConfig

    fields = dict(model="m", out="s", languages="de", backend="vllm", reap=False)
    with pytest.raises(ValueError, match="vLLM picks its own platform .* CUDA_VISIBLE_DEVICES"):
        CalibrationConfig(**fields, device="cpu:1")
    assert CalibrationConfig(**fields).batch_size == 256  # one vLLM call schedules many sequences
    assert CalibrationConfig(model="m", out="s", languages="de").batch_size == 8
    with pytest.raises(ValueError, match="generate was replaced by routing: 'routing: generated'"):
        CalibrationConfig(model="m", out="s", languages="de", generate=True)  # an old YAML config file


def test_an_mxfp4_base_on_a_cpu_without_amx_is_refused_before_vllm_starts(tmp_path: Path, cpu_without_amx) -> None:
    """The released GPT-OSS layout on a CPU without AMX: exit 2 with the reason, nothing written."""
    from tests.released import save_released_gpt_oss

    base = save_released_gpt_oss(tmp_path / "gpt-oss", layers=2, experts=4, top_k=2, shards=1)
    r = runner.invoke(app, ["calibrate", str(base), "--out", str(tmp_path / "s"), "-l", "de", "--backend", "vllm",
                           "--data", "sample"])
    assert r.exit_code == 2 and "its experts are MXFP4" in said(r) and "AMX tiles" in said(r), r.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("routing", ["reference", "generated"])
def test_calibrate_in_vllm_agrees_with_transformers(
    tmp_path: Path, sample_dir: Path, monkeypatch: pytest.MonkeyPatch, routing: str
) -> None:
    """The same command on both backends; "generated" runs the engine core in child processes as users do,
    "reference" in this process (about 20 s faster to start)."""
    if routing == "reference":
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    base = save_tiny("qwen3_moe", tmp_path / "base")
    common = [str(base), "-l", "de", "--direction", "both", "--data", str(sample_dir), "--limit", "3",
              "--no-reap", "--routing", routing, "--max-new-tokens", "6"]  # fmt: skip
    stats = {}
    for backend in ("transformers", "vllm"):
        out = tmp_path / f"{backend}.stats.safetensors"
        r = runner.invoke(app, ["calibrate", *common, "--backend", backend, "--out", str(out)])
        assert r.exit_code == 0, r.output
        stats[backend] = RoutingStats.load(out)

    got, ref = stats["vllm"], stats["transformers"]
    assert_same_stats(got, ref)
    assert sorted(got.groups) == ["de-en", "en-de"] and all(g.num_sequences == 3 for g in got.groups.values())
    assert got.header["routing"] == ref.header["routing"] == routing
    # the same header as the transformers path: base, split, the config
    assert got.header["base"] == ref.header["base"] and got.header["split"] == "dev"
    vllm_only = {"backend": "vllm", "batch_size": 256, "out": str(tmp_path / "vllm.stats.safetensors")}
    assert got.header["config"] == {**ref.header["config"], **vllm_only}

    plan = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", str(tmp_path / "vllm.stats.safetensors"), "--out", str(plan), "--drop", "8"])
    assert r.exit_code == 0, r.output
    assert sum(json.loads(r.stdout)["experts_per_layer"]) == 4 * 8
    assert json.loads(plan.read_text())["collector"] == "vllm"


def test_reap_follows_the_backend_unless_asked_for() -> None:
    from moe_specialists.pruning.calibrate import CalibrationConfig

    fields = dict(model="m", out="s", languages="de")
    assert CalibrationConfig(**fields).reap is True
    assert CalibrationConfig(**fields, backend="vllm").reap is False
    assert CalibrationConfig(**fields, reap=False).reap is False
    with pytest.raises(ValueError, match="REAP needs the transformers backend"):
        CalibrationConfig(**fields, backend="vllm", reap=True)
