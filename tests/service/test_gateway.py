"""End to end on the real vLLM CPU engine: one app serving a registry of two pruned specialists of a tiny
random model (en-de and de-en) in-process, API keys on, a tiny queue. The model is random, so texts are
garbage: the tests check routing, shapes, limits and errors (and one transformers oracle), not quality."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from moe_specialists.models.registry import Registry
from moe_specialists.pruning.apply import apply_plan
from moe_specialists.pruning.plan import plan_from_kept
from moe_specialists.service.app import create_app
from moe_specialists.service.settings import Settings
from tests.service.conftest import wait_ready

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def registry_dir(tiny_model_dir, tmp_path_factory):
    """Two PRUNED specialists of the tiny model (per-layer expert counts 6/4 and 4/5 of 8, so vLLM loads
    them through the plugin), registered in a registry folder."""
    root = tmp_path_factory.mktemp("gateway")
    registry = Registry(root / "registry")
    for name, kept, direction in [("tiny-en-de", [[0, 1, 2, 3, 4, 5], [0, 2, 4, 6]], "en-de"),
                                  ("tiny-de-en", [[1, 3, 5, 7], [0, 1, 2, 3, 4]], "de-en")]:
        out = apply_plan(plan_from_kept(tiny_model_dir, kept), root / name)
        registry.register_dir(name, out, directions=[direction])
    return root / "registry"


@pytest.fixture(scope="module")
def client(registry_dir):
    settings = Settings(
        registry_dir=registry_dir,
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        max_queue_per_engine=3,
        max_batch_size=8,
        max_chars_per_text=200,
        max_chars_per_batch=300,
        default_max_tokens=8,
        max_tokens_limit=64,
        api_keys=[KEY],
        cors_origins=["https://example.org"],
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def translate(client, **body):
    return client.post("/v1/translate", json=body, headers=AUTH)


@pytest.mark.parametrize(("source", "target", "specialist"), [
    ("en", "de", "tiny-en-de"), ("de", "en", "tiny-de-en")])
def test_routes_each_direction_to_its_specialist(client, source, target, specialist):
    r = translate(client, text="Hello world", source=source, target=target, max_tokens=6)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Specialist"] == specialist == body["specialist"]
    (item,) = body["translations"]
    assert item["specialist"] == specialist and item["route"] == "exact" and item["source"] == source
    assert 1 <= item["generated_tokens"] <= 6 and isinstance(item["text"], str)
    assert "<|" not in item["text"]


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


def test_auto_source_detected_and_routed(client):
    r = translate(client, text=["Die Katze ist nicht hier und sie schläft."], source="auto", target="en")
    assert r.status_code == 200, r.text
    item = r.json()["translations"][0]
    assert item["detected_language"]["language"] == "de" and item["specialist"] == "tiny-de-en"


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


def test_libretranslate(client):
    r = client.post("/translate", json={"q": "Hello world", "source": "en", "target": "de", "api_key": KEY})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["translatedText"], str) and r.headers["X-Specialist"] == "tiny-en-de"
    r = client.post("/translate", data={"q": "Die Katze ist nicht hier.", "source": "auto", "target": "en",
                                        "api_key": KEY})
    assert r.status_code == 200, r.text
    assert r.json()["detectedLanguage"]["language"] == "de"
    r = client.post("/translate", json={"q": ["a", "b"], "source": "en", "target": "de"}, headers=AUTH)
    assert r.status_code == 200 and len(r.json()["translatedText"]) == 2
    langs = {lang["code"]: lang["targets"] for lang in client.get("/languages").json()}
    assert langs == {"en": ["de"], "de": ["en"]}


def test_languages_specialists_health(client):
    body = client.get("/v1/languages").json()
    assert {(d["source"], d["target"], d["specialist"]) for d in body["directions"]} == {
        ("en", "de", "tiny-en-de"), ("de", "en", "tiny-de-en")}
    specs = {s["name"]: s for s in client.get("/v1/specialists").json()}
    entry = Registry(client.app.state.settings.registry_dir).get("tiny-en-de")
    assert specs["tiny-en-de"]["state"] == "ready" and specs["tiny-en-de"]["bytes_saved"] == entry.bytes_saved > 0
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"


def test_metrics(client):
    translate(client, text="Hello", source="en", target="de")
    text = client.get("/metrics").text
    assert 'moe_gateway_requests_total{direction="en-de",specialist="tiny-en-de",status="200"}' in text
    assert "moe_gateway_time_to_first_token_seconds_bucket" in text
    assert 'moe_gateway_generated_tokens_total{direction="en-de",specialist="tiny-en-de"}' in text
    assert 'moe_gateway_engine_ready{backend="vllm-inprocess",specialist="tiny-de-en"} 1.0' in text
    saved = Registry(client.app.state.settings.registry_dir).get("tiny-en-de").bytes_saved
    assert f'moe_specialist_bytes_saved{{specialist="tiny-en-de"}} {float(saved)}' in text


def test_cors(client):
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    r = client.options("/v1/translate", headers=preflight)
    assert r.headers["access-control-allow-origin"] == "https://example.org"


# ---- errors: 4xx with a useful body, never 5xx ----

def test_api_keys(client):
    body = {"text": "Hello", "source": "en", "target": "de"}
    r = client.post("/v1/translate", json=body)
    assert r.status_code == 401 and "API key" in r.json()["error"]
    r = client.post("/v1/translate", json=body, headers={"X-API-Key": "wrong"})
    assert r.status_code == 403
    assert client.post("/v1/translate", json=body, headers={"X-API-Key": KEY}).status_code == 200
    assert client.post("/translate", json={"q": "x", "source": "en", "target": "de"}).status_code == 401
    r = client.post("/translate", json={"q": "x", "source": "en", "target": "de", "api_key": "no"})
    assert r.status_code == 403


GOOD = {"text": "Hello", "source": "en", "target": "de"}


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 422, "invalid request"),
        ({"text": "Hello", "source": "en"}, 422, "target"),
        ({**GOOD, "text": 42}, 422, "text"),
        ({**GOOD, "text": []}, 400, "no text"),
        ({**GOOD, "text": [None]}, 422, "text"),
        ({**GOOD, "colour": "red"}, 422, "colour"),
        ({**GOOD, "source": "xx"}, 400, "accepted: auto, de, en"),  # the served languages
        ({**GOOD, "target": "klingon"}, 400, "accepted: de, en"),
        ({**GOOD, "target": "en"}, 400, "both 'en'"),
        ({**GOOD, "target": "ja"}, 400, "tiny-en-de: en-de"),
        ({**GOOD, "max_tokens": 0}, 422, "max_tokens"),
        ({**GOOD, "max_tokens": 10_000}, 400, "limit 64"),
        ({**GOOD, "sampling": {"temperature": -1}}, 422, "temperature"),
        ({**GOOD, "sampling": {"beam": 4}}, 422, "beam"),
        ({**GOOD, "text": ["a", "b"], "stream": True}, 400, "one text"),
        ({**GOOD, "specialist": "nope"}, 400, "tiny-de-en"),
        ({**GOOD, "text": "x" * 201}, 413, "limit is 200"),
        ({**GOOD, "text": ["x" * 150, "y" * 151]}, 413, "limit is 300"),
        ({**GOOD, "text": ["a"] * 9}, 413, "limit is 8"),
    ],
)
def test_malformed_bodies(client, body, status, says):
    kwargs = {"content": body, "headers": {**AUTH, "content-type": "application/json"}} if isinstance(
        body, bytes) else {"json": body, "headers": AUTH}
    r = client.post("/v1/translate", **kwargs)
    assert r.status_code == status, r.text
    payload = r.json()
    assert says in payload["error"], payload
    if status == 413:
        assert payload["limit"] in (200, 300, 8)


@pytest.mark.parametrize(
    "body",
    [b"", b"null", b'{"source": "en", "target": "de"}', b'{"q": "x", "source": "en", "target": "xx"}',
     b'{"q": "x", "source": "en", "target": "de", "format": "pdf"}', b'{"q": 5, "target": "de"}', b"\xff\xfe"],
)
def test_libretranslate_malformed(client, body):
    r = client.post("/translate", content=body, headers={**AUTH, "content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]


def test_unknown_route_and_method(client):
    assert client.get("/v1/nothing").status_code == 404
    r = client.get("/v1/translate")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"


def test_queue_full_429(client):
    r = translate(client, text=["a", "b", "c", "d"], source="en", target="de")  # 4 texts > queue of 3
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "queue" in r.json()["error"]
    assert translate(client, text="a", source="en", target="de").status_code == 200  # slots released


def test_timeout_504(client):
    settings = client.app.state.settings
    old = settings.request_timeout_s
    settings.request_timeout_s = 0.001
    try:
        r = translate(client, text="Hello", source="en", target="de", max_tokens=64)
    finally:
        settings.request_timeout_s = old
    assert r.status_code == 504 and "no answer within" in r.json()["error"]
    assert client.app.state.pool.engines["tiny-en-de"].inflight == 0


def test_engine_down_503(client):
    engine = client.app.state.pool.engines["tiny-en-de"]
    engine.state = "failed"
    try:
        # Routing falls back to a ready lower tier: the de-en specialist serves the pair.
        r = translate(client, text="Hello", source="en", target="de")
        assert r.status_code == 200 and r.json()["translations"][0]["route"] == "pair"
        assert r.headers["X-Specialist"] == "tiny-de-en"
        # Asked for by name, the failed specialist answers 503 with Retry-After.
        r = translate(client, text="Hello", source="en", target="de", specialist="tiny-en-de")
        assert r.status_code == 503 and r.headers["Retry-After"] and "failed" in r.json()["error"]
        # The other specialist keeps serving; readiness reports the failed one.
        assert translate(client, text="Hallo", source="de", target="en").status_code == 200
        ready = client.get("/readyz").json()
        assert ready["status"] == "degraded" and ready["specialists"]["tiny-en-de"]["state"] == "failed"
    finally:
        engine.state = "ready"
