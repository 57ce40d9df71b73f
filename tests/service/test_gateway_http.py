"""The gateway's HTTP layer on in-memory engines (tests/service/fake_engine.py: these tests check validation,
routing, limits, API keys, CORS and error bodies, not vLLM): the same registry of two pruned specialists
(en-de and de-en) and the same settings as test_gateway.py, each specialist served by a ``FakeEngine`` that
echoes the text one word per token. Every 4xx/5xx answer must say what is wrong."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from moe_specialists.models.registry.store import Registry
from moe_specialists.service.app import create_app
from tests.service.conftest import AUTH, KEY, gateway_settings, wait_ready
from tests.service.fake_engine import fake_engines

TOKEN_DELAY_S = 0.01  # per generated word: a 64-token request outlasts a 1 ms timeout


@pytest.fixture(scope="module")
def client(registry_dir):
    with TestClient(create_app(gateway_settings(registry_dir), engine_factory=fake_engines(TOKEN_DELAY_S))) as c:
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


def test_auto_source_detected_and_routed(client):
    r = translate(client, text=["Die Katze ist nicht hier und sie schläft."], source="auto", target="en")
    assert r.status_code == 200, r.text
    item = r.json()["translations"][0]
    assert item["detected_language"]["language"] == "de" and item["specialist"] == "tiny-de-en"


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


def test_no_route_runs_in_a_worker_thread(registry_dir):
    """FastAPI runs a plain ``def`` endpoint or dependency in a worker thread (a thread hand-off per request on
    the hot path): every endpoint and dependency of every route is ``async def``."""
    import inspect

    from fastapi.routing import APIRoute

    def calls(dependant):
        yield dependant.call
        for sub in dependant.dependencies:
            yield from calls(sub)

    app = create_app(gateway_settings(registry_dir), engine_factory=fake_engines())
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert any(r.path == "/v1/translate" for r in routes)
    sync = {f"{r.path}: {c.__qualname__}" for r in routes for c in calls(r.dependant)
            if c is not None and not inspect.iscoroutinefunction(c)}
    assert sync == set()
