"""A specialist folder stock tools understand: remote-code loading without this project, its own model card,
files readable by others, and the transformers loader refusing tensors that disagree with the config."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_specialists.models.apply import apply_plan
from moe_specialists.models.plan import plan_from_kept
from tests.released import PARENT_CARD, save_released_gpt_oss, save_released_qwen3_moe

KEPT = [[0, 3, 5, 7, 9, 11], [1, 2, 4, 6, 8, 10, 12, 13, 14, 15, 0], list(range(16)), [2, 5, 8, 11]]
KEPT = [sorted(k) for k in KEPT]
SAVE = {"gpt_oss": save_released_gpt_oss, "qwen3_moe": save_released_qwen3_moe}

# Stock transformers in a fresh interpreter: -I (isolated: no cwd, no user site, no PYTHON* variables) and -S
# (no site: no .pth files, so neither this worktree's nor the main checkout's editable finder of
# moe_specialists is installed); sys.path = this interpreter's site-packages folders only, for torch,
# transformers, accelerate.
STOCK = """
import importlib.util, json, sys
sys.path[:0] = json.loads(sys.argv[1])
assert importlib.util.find_spec("moe_specialists") is None, "moe_specialists is importable"
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[2], trust_remote_code=True, dtype=torch.float32)
out = model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=6, do_sample=False)
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__, "tokens": out[0].tolist()}))
"""


def stock_load(folder: Path, home: Path) -> dict:
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": os.environ["PATH"], "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", STOCK, json.dumps(site), str(folder)],
        capture_output=True, text=True, env=env, cwd=home, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_stock_transformers_loads_the_specialist_with_remote_code(tmp_path, family):
    from moe_specialists.models.pruned import load_causal_lm

    base = SAVE[family](tmp_path / "base")
    spec = apply_plan(plan_from_kept(base, KEPT), tmp_path / "spec")
    config = json.loads((spec / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_pruned.Pruned")
    got = stock_load(spec, tmp_path)
    assert got["class"] == config["architectures"][0] and "moe_specialists" not in got["module"]
    ours = load_causal_lm(spec, "float32").generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=6, do_sample=False)
    assert got["tokens"] == ours[0].tolist()


def test_model_card_and_modes_under_a_restrictive_umask(tmp_path):
    base = save_released_gpt_oss(tmp_path / "base")
    plan = plan_from_kept(base, KEPT)
    old = os.umask(0o077)
    try:
        spec = apply_plan(plan, tmp_path / "spec", quality={"en-de chrF": 41.5})
    finally:
        os.umask(old)
    assert stat.S_IMODE(spec.stat().st_mode) == 0o755
    for item in spec.iterdir():
        assert stat.S_IMODE(item.stat().st_mode) == 0o644, item.name
    names = {p.name for p in spec.iterdir()}
    assert "eval_results.json" not in names and {"LICENSE", "tokenizer.json", "modeling_pruned.py"} <= names
    card = (spec / "README.md").read_text()
    assert card != PARENT_CARD and "Its own card" not in card
    assert f"base_model: {base}" in card and "license: apache-2.0" in card
    assert "experts kept per MoE layer (of 16): [6, 11, 16, 4]" in card
    weight_bytes = json.loads((spec / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    saved = plan.base.weight_bytes - weight_bytes
    assert saved > 0 and f"weight bytes: {weight_bytes:,} ({saved:,} saved" in card
    assert "en-de chrF: 41.5" in card and "Weights: mxfp4" in card


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_transformers_loader_refuses_counts_that_disagree_with_the_tensors(tmp_path, family):
    from transformers import AutoModelForCausalLM

    import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes)

    base = SAVE[family](tmp_path / "base")
    spec = apply_plan(plan_from_kept(base, KEPT), tmp_path / "spec")
    config = json.loads((spec / "config.json").read_text())
    config["num_experts_per_layer"] = [8, 11, 16, 4]  # layer 0 holds 6
    (spec / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"disagree in layer 0: config.json num_experts_per_layer\[0\] = 8, but"):
        AutoModelForCausalLM.from_pretrained(spec)
    config["num_experts_per_layer"] = [6, 11, 16, 5]  # layer 3 holds 4
    (spec / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"disagree in layer 3: .*\[3\] = 5, but"):
        AutoModelForCausalLM.from_pretrained(spec, trust_remote_code=True)
