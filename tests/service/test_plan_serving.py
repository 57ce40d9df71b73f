"""Specialists served from their base and a plan (``-s multi=PLAN.json:...``) in the real vLLM CPU engine. One
gateway serves ``multi`` (the bundled multilingual plan on the bundled translator, en/de/fr) and ``en-de``
(the bundled en-de plan on a copy of the bundled translator whose first shard was modified after the plan was
made: en-de and en-zh). ``multi`` answers exactly as its sliced copy does in transformers and reports the
sliced copy's bytes; ``en-de`` is given up with what differs, the gateway serves on, its en-de pair is taken by
``multi`` and its en-zh pair gets a 503 that says why. A remote vLLM server (``vllm serve VIEW``, this project's
plugin loaded by its entry point) serves a plan view like its sliced copy too."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.extract import extract_answer
from moe_specialists.models.plan import Plan
from moe_specialists.models.plan_loading import view_of_plan
from moe_specialists.models.prompts import render
from moe_specialists.models.registry.entries import weight_stats
from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR, PLANS_DIR
from moe_specialists.service.app import create_app
from moe_specialists.service.settings import Settings, SpecialistSpec
from tests.service.conftest import READY_TIMEOUT_S, VllmServer, flip_last_byte, metric, wait_for, wait_ready

pytestmark = pytest.mark.slow  # make test-fast skips it: plans served end to end by gateways

TEXT = "My brother bought a new car yesterday."  # both specialists answer it unlike the base


def bundled_plan(name: str, base, path) -> Plan:
    """The committed plan ``name`` (it names its base by its repository path) on ``base``, saved at ``path``."""
    plan = Plan.load(PLANS_DIR / f"{name}.json")
    plan.base.id = str(base)
    plan.save(path)
    return plan


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(root, the multilingual plan, the tampered shard, a client of the gateway once multi is ready and en-de
    given up)."""
    root = tmp_path_factory.mktemp("plans")
    multi = bundled_plan("multilingual", BUNDLED_MODEL_DIR, root / "multilingual.json")
    base = shutil.copytree(BUNDLED_MODEL_DIR, root / "base", ignore=shutil.ignore_patterns("plans", "*.py", "__py*"))
    bundled_plan("en-de", base, root / "en-de.json")
    index = json.loads((base / "model.safetensors.index.json").read_text())
    shard = base / sorted(set(index["weight_map"].values()))[0]
    flip_last_byte(shard)
    settings = Settings(
        specialists=[SpecialistSpec(name="multi", path=str(root / "multilingual.json"), languages=["en", "de", "fr"]),
                     SpecialistSpec(name="en-de", path=str(root / "en-de.json"), directions=["en-de", "en-zh"])],
        views_dir=root / "views", dtype="float32", max_model_len=512, enforce_eager=True, health_interval_s=0.5,
        engine_max_restarts=1, engine_restart_initial_delay_s=0.1, engine_restart_max_delay_s=0.5,
    )
    with TestClient(create_app(settings)) as client:
        wait_for(client, lambda s: s["multi"]["state"] == "ready" and s["en-de"]["state"] == "given_up",
                 READY_TIMEOUT_S, "multi ready, en-de given up")
        yield root, multi, shard, client


def greedy_answer(folder, source: str, target: str) -> str:
    """What the checkpoint in ``folder`` answers to TEXT in transformers, greedy, 24 tokens."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tok(render(tok, source, target, TEXT), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id)
    return extract_answer(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False), [tok.eos_token])[0].strip()


def test_a_plan_is_served_like_its_sliced_copy(served):
    root, plan, _, client = served
    expected = greedy_answer(apply_plan(plan, root / "copy"), "en", "fr")
    assert expected != greedy_answer(BUNDLED_MODEL_DIR, "en", "fr")  # the answer tells the specialist from its base
    r = client.post("/v1/translate", json={"text": TEXT, "source": "en", "target": "fr", "max_tokens": 24})
    assert r.status_code == 200, r.text
    assert r.json()["translations"][0]["text"] == expected
    info = {s["name"]: s for s in client.get("/v1/specialists").json()}["multi"]
    params, nbytes = weight_stats(root / "copy")
    assert info["weight_bytes"] == nbytes and info["base_weight_bytes"] == plan.base.weight_bytes
    assert metric(client, "moe_specialist_parameters", specialist="multi") == params
    assert metric(client, "moe_specialist_weight_bytes", specialist="multi") == nbytes
    assert not any(p.suffix == ".safetensors" and not p.is_symlink() for p in (root / "views").rglob("*"))


def test_a_tampered_base_fails_only_its_specialist(served):
    _, _, shard, client = served
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "degraded", r.text
    error = r.json()["specialists"]["en-de"]["error"]
    assert f"{shard.name} has sha256" in error and "the plan expects" in error, error

    r = client.post("/v1/translate", json={"text": TEXT, "source": "en", "target": "de", "max_tokens": 8})
    item = r.json()["translations"][0]
    assert r.status_code == 200 and (item["specialist"], item["route"]) == ("multi", "multilingual"), r.text
    r = client.post("/v1/translate", json={"text": TEXT, "source": "en", "target": "zh", "max_tokens": 8})
    assert r.status_code == 503 and "Retry-After" not in r.headers, r.text
    assert "'en-de' is given up" in r.json()["error"] and f"{shard.name} has sha256" in r.json()["error"]

    assert metric(client, "moe_specialist_weight_bytes", absent=None, specialist="en-de") is None
    assert {s["name"]: s for s in client.get("/v1/specialists").json()}["en-de"]["bytes_saved"] is None
    assert metric(client, "moe_engine_state", specialist="en-de", state="given_up") == 1


def test_a_remote_vllm_server_serves_a_plan_view(tmp_path):
    """The view (links to the base's shards, config.json with the kept lists) served by a separate vLLM
    server; the gateway reaches it as a remote specialist. The server does not check the base's hashes: the
    view is checked when it is made (here ``view_of_plan``), on the host whose paths its links name."""
    plan = bundled_plan("en-de", BUNDLED_MODEL_DIR, tmp_path / "en-de.json")
    expected = greedy_answer(apply_plan(plan, tmp_path / "copy"), "en", "de")
    assert expected != greedy_answer(BUNDLED_MODEL_DIR, "en", "de")  # the answer tells the specialist from its base
    server = VllmServer(view_of_plan(plan, tmp_path / "views"), tmp_path / "server.log")
    server.start()
    try:
        server.wait_up()
        settings = Settings(specialists=[SpecialistSpec(name="en-de", path=server.url, directions=["en-de"])],
                            health_interval_s=0.5, remote_timeout_s=5)
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            r = client.post("/v1/translate", json={"text": TEXT, "source": "en", "target": "de", "max_tokens": 24})
            assert r.status_code == 200, r.text
            assert r.json()["translations"][0]["text"] == expected
    finally:
        server.kill(signal.SIGTERM)
