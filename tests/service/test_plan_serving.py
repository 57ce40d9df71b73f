"""A specialist served from its base and a plan (``-s en-de=PLAN.json:...``): the bundled en-de plan on the
bundled translator in the real vLLM CPU engine answers exactly as its sliced copy does in transformers, and
reports the sliced copy's bytes; a plan whose base was tampered with is refused before anything starts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.extract import extract_answer
from moe_specialists.models.plan import Plan
from moe_specialists.models.prompts import render
from moe_specialists.models.registry import weight_stats
from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR, PLANS_DIR
from moe_specialists.service.app import create_app
from moe_specialists.service.settings import Settings, SpecialistSpec
from tests.service.conftest import wait_ready

TEXT = "The children are playing in the garden."


def settings(plan_path, views) -> Settings:
    spec = SpecialistSpec(name="en-de", path=str(plan_path), directions=["en-de"])
    return Settings(specialists=[spec], views_dir=views, dtype="float32", max_model_len=512, enforce_eager=True)


def test_a_plan_is_served_like_its_sliced_copy(tmp_path):
    plan = Plan.load(PLANS_DIR / "en-de.json").model_copy(update={})
    plan.base.id = str(BUNDLED_MODEL_DIR)  # the committed plan names the base by its repository path
    plan_path = tmp_path / "en-de.json"
    plan.save(plan_path)
    copy = apply_plan(plan, tmp_path / "copy")
    tok = AutoTokenizer.from_pretrained(copy)
    model = AutoModelForCausalLM.from_pretrained(copy, dtype=torch.float32).eval()
    ids = tok(render(tok, "en", "de", TEXT), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id)
    expected = extract_answer(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False), [tok.eos_token])[0]

    with TestClient(create_app(settings(plan_path, tmp_path / "views"))) as client:
        wait_ready(client)
        r = client.post("/v1/translate", json={"text": TEXT, "source": "en", "target": "de", "max_tokens": 24})
        assert r.status_code == 200, r.text
        assert r.json()["translations"][0]["text"] == expected.strip()
        served = {s["name"]: s for s in client.get("/v1/specialists").json()}["en-de"]
        metrics = client.get("/metrics").text
    params, nbytes = weight_stats(copy)
    assert served["weight_bytes"] == nbytes and served["base_weight_bytes"] == plan.base.weight_bytes
    line = next(x for x in metrics.splitlines() if x.startswith('moe_specialist_parameters{specialist="en-de"}'))
    assert float(line.split()[-1]) == params
    assert not any(p.suffix == ".safetensors" and not p.is_symlink() for p in (tmp_path / "views").rglob("*"))


def test_a_tampered_base_is_refused_at_start(tmp_path):
    base = shutil.copytree(BUNDLED_MODEL_DIR, tmp_path / "base")
    plan = Plan.load(PLANS_DIR / "en-de.json")
    plan.base.id = str(base)
    plan_path = tmp_path / "en-de.json"
    plan.save(plan_path)
    index = json.loads((base / "model.safetensors.index.json").read_text())
    shard = base / sorted(set(index["weight_map"].values()))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{shard.name} has sha256 .* the plan expects"):
        create_app(settings(plan_path, tmp_path / "views"))
