"""Serving on the real vLLM CPU engine: one app serves a registry of two pruned specialists of a tiny random
model (en-de and de-en) in-process, API keys on, a tiny queue. The model is random, so texts are garbage:
the tests check what the engine serves (a transformers oracle, determinism, streaming, the metrics of real
traffic), not quality. Validation, routing, limits and error bodies: test_gateway_http.py (no engine)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from moe_specialists.models.registry.store import Registry
from moe_specialists.service.app import create_app
from tests.service.conftest import AUTH, gateway_settings, wait_ready


@pytest.fixture(scope="module")
def client(registry_dir):
    with TestClient(create_app(gateway_settings(registry_dir))) as c:
        wait_ready(c)
        yield c


def translate(client, **body):
    return client.post("/v1/translate", json=body, headers=AUTH)


def test_same_text_as_transformers_greedy(client):
    """Oracle: transformers greedy decoding of the same prompt (models.prompts.render) on the pruned
    specialist, cleaned by the same extraction, equals what the gateway answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moe_specialists.models.prompts import render
    from moe_specialists.models.pruned import register_transformers
    from moe_specialists.service.extract import extract_translation

    register_transformers()
    path = client.app.state.pool.engines["tiny-en-de"].spec.path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tok(render(tok, "en", "de", "The cat sits."), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id)
    expected = extract_translation(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False), [tok.eos_token])
    r = translate(client, text="The cat sits.", source="en", target="de", max_tokens=6)
    # The byte-level tokenizer of a random model can end on half a UTF-8 character: transformers decodes it
    # to U+FFFD, vLLM's detokenizer holds it back.
    assert r.json()["translations"][0]["text"] == expected.rstrip("\ufffd")


def test_greedy_is_deterministic_and_batch_matches_single(client):
    single = translate(client, text="The cat sits.", source="en", target="de").json()["translations"][0]["text"]
    batch = translate(client, text=["The cat sits.", "Hello"], source="en", target="de").json()
    assert [t["text"] for t in batch["translations"]][0] == single
    assert len(batch["translations"]) == 2


def test_stream_sse(client):
    with client.stream("POST", "/v1/translate", headers=AUTH,
                       json={"text": "Hello", "source": "en", "target": "de", "stream": True}) as r:
        assert r.status_code == 200 and r.headers["X-Specialist"] == "tiny-en-de"
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [block for block in raw.split("\n\n") if block.strip()]
    assert events[0].startswith("event: meta")
    assert events[-1].startswith("event: done")
    done = json.loads(events[-1].split("data: ", 1)[1])
    deltas = "".join(json.loads(e.split("data: ", 1)[1])["delta"] for e in events[1:-1])
    assert done["translation"].startswith(deltas.strip()) and done["generated_tokens"] >= 1


def test_metrics(client):
    translate(client, text="Hello", source="en", target="de")
    text = client.get("/metrics").text
    assert 'moe_gateway_requests_total{direction="en-de",specialist="tiny-en-de",status="200"}' in text
    assert "moe_gateway_time_to_first_token_seconds_bucket" in text
    assert 'moe_gateway_generated_tokens_total{direction="en-de",specialist="tiny-en-de"}' in text
    assert 'moe_gateway_engine_ready{backend="vllm-inprocess",specialist="tiny-de-en"} 1.0' in text
    saved = Registry(client.app.state.settings.registry_dir).get("tiny-en-de").bytes_saved
    assert f'moe_specialist_bytes_saved{{specialist="tiny-en-de"}} {float(saved)}' in text
