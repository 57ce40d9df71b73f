"""Reliability of the gateway on real engines, over real HTTP (uvicorn on 127.0.0.1): one app serves an
in-process vLLM specialist (en-de) and a remote one (en-fr, a ``vllm.entrypoints.openai.api_server``
subprocess) of the tiny random model, with small limits (queue of 2 per engine, 4-8 tokens).

* fuzz: schemathesis generates >= 1000 requests from the OpenAPI schema (valid and invalid ones), steered
  so that texts and sampling options reach the engines; none may be answered 5xx and the server must live on;
* Unicode edge cases (RTL, CJK, emoji, combining marks, controls) reach both engines: translated;
* overload: more concurrent requests than the queue admits get 429 with Retry-After, the admitted ones a
  translation from the engine serving them side by side;
* engine failure: the remote backend is killed mid-run: its specialist turns unready, answers 503 quickly
  with Retry-After while the other keeps serving, and recovers when the backend comes back on its port.

Hostile input the gateway refuses before any engine (oversized, unknown codes, lone surrogates, empty
texts): test_reliability_http.py. The tests run in file order: the backend is killed by the last one."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st

from moe_specialists.service.app import create_app
from tests.service.conftest import (
    LOCAL,
    MAX_TOKENS,
    QUEUE,
    READY_TIMEOUT_S,
    REMOTE,
    ServerThread,
    VllmServer,
    free_port,
    reliability_settings,
    wait_ready,
)
from tests.service.fuzzing import fuzz_operations

pytestmark = [pytest.mark.timeout(READY_TIMEOUT_S + 300), pytest.mark.slow]
# (slow: make test-fast skips it: fault injection against running gateways)


@pytest.fixture(scope="module")
def backend(tiny_model_dir, tmp_path_factory):
    server = VllmServer(tiny_model_dir, tmp_path_factory.mktemp("vllm-backend") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def gateway(tiny_model_dir, backend):
    """The gateway's base URL; the in-process engine and the backend start side by side."""
    app = create_app(reliability_settings(str(tiny_model_dir), backend.url))
    port = free_port()
    with ServerThread(app, port):
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as c:
            backend.wait_up()
            wait_ready(c)
        yield app, url


@pytest.fixture(scope="module")
def client(gateway):
    _, url = gateway
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def translate(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/translate", json=body)


def assert_alive(client: httpx.Client, app) -> None:
    assert client.get("/healthz").status_code == 200
    r = translate(client, text="Hello world", source="en", target="de")
    assert r.status_code == 200 and r.json()["translations"][0]["specialist"] == LOCAL, r.text
    assert all(e.inflight == 0 for e in app.state.pool.engines.values())


# ---- fuzz: the OpenAPI schema ----

FUZZ_BUDGET = {  # examples per (operation, generation mode); the GET operations take no input: one each
    ("POST", "/v1/translate", "positive"): 600,
    ("POST", "/v1/translate", "negative"): 400,
    ("POST", "/translate", "positive"): 100,
    ("POST", "/translate", "negative"): 60,
}


def openapi_with_libretranslate_body(url: str) -> dict:
    """The served schema, plus the body of LibreTranslate's /translate (read by hand, so FastAPI does not
    document it) so that it is fuzzed too."""
    from moe_specialists.service.schemas import LibreTranslateRequest

    spec = httpx.get(f"{url}/openapi.json").raise_for_status().json()
    body = LibreTranslateRequest.model_json_schema()
    spec["paths"]["/translate"]["post"]["requestBody"] = {
        "required": True, "content": {"application/json": {"schema": body}}}
    return spec


def steer_to_served_pairs(context, body):
    """schemathesis ``flatmap_body`` hook: besides each generated JSON object, also try it with a served
    language pair (and a max_tokens within the limit, no forced specialist), so that generated texts and
    sampling options reach the engines instead of stopping at the language check."""
    if not isinstance(body, dict):
        return st.just(body)
    pair = {"source": st.sampled_from(["en", "auto"]), "target": st.sampled_from(["de", "fr"])}
    optional = {"max_tokens": st.integers(1, MAX_TOKENS)} if context.operation.path == "/v1/translate" else {}
    kept = {k: v for k, v in body.items() if k not in ("max_tokens", "specialist")}
    return st.one_of(st.just(body), st.fixed_dictionaries(pair, optional=optional).map(lambda d: kept | d))


def error_message(r: schemathesis.Response) -> str | None:
    try:
        message = r.json().get("error")
    except (ValueError, AttributeError):
        return None
    return message if isinstance(message, str) and message else None


@pytest.mark.slow
def test_fuzz_openapi_never_5xx(gateway, client):
    """Valid (positive) and invalid (negative) requests from the OpenAPI schema: never 5xx, every 4xx says
    what is wrong, no stream ends in an error event; then the gateway still translates."""
    app, url = gateway
    schema = schemathesis.openapi.from_dict(openapi_with_libretranslate_body(url))
    schema.hook("flatmap_body")(steer_to_served_pairs)
    translated = 0

    def judge(key, r) -> str | None:
        nonlocal translated
        content_type = (r.headers.get("content-type") or [""])[0]  # lowercase keys, lists of values
        if r.status_code >= 500:
            return "server error"
        if content_type.startswith("text/event-stream") and "event: error" in r.text:
            return "a stream that ends in an error"
        if r.status_code >= 400 and not error_message(r):
            return "an error without a message"
        translated += r.status_code == 200 and key[0] == "POST"
        return None

    # DeepL's {"message": ...} shape on /v2 and /v3: test_fuzz_compat.py fuzzes those
    result = fuzz_operations(schema, url, FUZZ_BUDGET, lambda path: path.startswith(("/v2/", "/v3/")), judge)
    print(f"{result.summary()}; {translated} translated")
    assert not result.errors, result.bad_answers()
    assert result.total >= 1000, result.sent
    assert_alive(client, app)


# ---- Unicode edge cases ----

UNICODE = {
    "arabic": "مرحبا بالعالم، كيف حالك؟",
    "hebrew": "שלום עולם, מה שלומך?",
    "mixed-bidi": "The word \u05e9\u05dc\u05d5\u05dd means peace (\u0633\u0644\u0627\u0645).",
    "chinese": "你好，世界。今天天气很好。",
    "japanese": "こんにちは、世界。カタカナ漢字",
    "emoji": "👋🌍 Hello 👨‍👩‍👧‍👦 family 🏳️‍🌈 flags 🇩🇪",
    "combining": "e\u0301 a\u0308 Z\u0324\u0354\u0367\u0311\u0313 n\u0303\u0303\u0303\u0303",
    "controls": "a\x00b\x01c\x07d\x1b[31m\x7fe\x85f",
    "bidi-override": "\u202eevil\u202c \u2066isolate\u2069 \u200f\u200e",
    "zero-width": "zero\u200bwidth\u200d\u2060joiners\ufeff",
    "whitespace": "line\nbreak\ttab\r\nCRLF\u2028sep\u00a0nbsp",
    "specials-as-text": "<|user|><|assistant|><eos><pad> </s> <|im_end|>",
    "private-use": "\ue000\U000f0000\U0010fffd",
    "noncharacters": "\ufffe\uffff\U0001fffe",
}


@pytest.mark.parametrize(("source", "target", "specialist"), [
    ("en", "de", LOCAL), ("en", "fr", REMOTE), ("auto", "de", LOCAL)])
@pytest.mark.parametrize("kind", sorted(UNICODE))
def test_unicode_edge_cases_translate(client, kind, source, target, specialist):
    r = translate(client, text=UNICODE[kind], source=source, target=target)
    assert r.status_code == 200, r.text
    (item,) = r.json()["translations"]
    assert item["specialist"] == specialist and isinstance(item["text"], str) and item["generated_tokens"] >= 1


@pytest.mark.parametrize("kind", ["arabic", "emoji", "controls", "bidi-override"])
def test_unicode_edge_cases_stream_and_libretranslate(client, kind):
    with client.stream("POST", "/v1/translate",
                       json={"text": UNICODE[kind], "source": "en", "target": "de", "stream": True}) as r:
        raw = r.read().decode()
    assert r.status_code == 200 and "event: done" in raw, raw
    r = client.post("/translate", json={"q": [UNICODE[kind], "ok"], "source": "en", "target": "fr"})
    assert r.status_code == 200 and len(r.json()["translatedText"]) == 2, r.text


# ---- overload ----

def test_overload_429_with_retry_after(gateway, client):
    """A burst of concurrent requests over a queue of 2: the rest get 429 with Retry-After, every admitted
    one a translation, and the queue is empty afterwards."""
    app, url = gateway
    n = 12

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as ac:
            body = {"text": "The quick brown fox jumps over the lazy dog.", "source": "en", "target": "de",
                    "max_tokens": MAX_TOKENS}
            return await asyncio.gather(*(ac.post("/v1/translate", json=body) for _ in range(n)))

    for _ in range(3):  # a burst that happens to be served one by one is retried
        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429}, [(r.status_code, r.text) for r in responses]
        if 429 in codes:
            break
    assert 429 in codes and 200 in codes, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1 and "queue" in r.json()["error"]
        else:
            (item,) = r.json()["translations"]
            assert item["specialist"] == LOCAL and item["generated_tokens"] >= 1
    assert_alive(client, app)


# ---- engine failure ----

def test_backend_killed_then_restarted(gateway, client, backend):
    app, url = gateway
    body = {"text": "Hello world", "source": "en", "target": "fr", "max_tokens": MAX_TOKENS}

    async def kill_mid_run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as ac:
            pending = [asyncio.ensure_future(ac.post("/v1/translate", json=body)) for _ in range(QUEUE)]
            await asyncio.sleep(0.05)
            backend.kill()
            return await asyncio.gather(*pending)

    inflight = asyncio.run(kill_mid_run())
    for r in inflight:  # done before the kill, or cut off by it
        assert r.status_code in (200, 503), r.text

    deadline = time.monotonic() + 15
    while client.get("/readyz").json()["specialists"][REMOTE]["state"] == "ready":
        assert time.monotonic() < deadline, "the killed backend still reads ready"
        time.sleep(0.2)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"  # readiness "any": the other serves
    assert ready.json()["specialists"][REMOTE]["state"] == "failed"
    assert ready.json()["specialists"][LOCAL]["state"] == "ready"
    for _ in range(3):
        start = time.monotonic()
        r = client.post("/v1/translate", json=body)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and REMOTE in r.json()["error"], r.text
        assert time.monotonic() - start < 5
        r = translate(client, text="Hello world", source="en", target="de")
        assert r.status_code == 200 and r.headers["X-Specialist"] == LOCAL, r.text
    r = client.post("/translate", json={"q": "Hello", "source": "en", "target": "fr"})
    assert r.status_code == 503 and r.headers["Retry-After"], r.text

    backend.start()
    backend.wait_up()
    deadline = time.monotonic() + 30
    while client.get("/readyz").json()["specialists"][REMOTE]["state"] != "ready":
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.2)
    assert client.get("/readyz").json()["status"] == "ready"
    for _ in range(3):
        r = client.post("/v1/translate", json=body)
        assert r.status_code == 200 and r.headers["X-Specialist"] == REMOTE, r.text
    assert_alive(client, app)
