"""Reliability of the gateway on real engines, over real HTTP (uvicorn on 127.0.0.1): one app serves an
in-process vLLM specialist (en-de) and a remote one (en-fr, a ``vllm.entrypoints.openai.api_server``
subprocess) of the tiny random model, with small limits (queue of 2 per engine, 4-8 tokens).

* fuzz: schemathesis generates >= 1000 requests from the OpenAPI schema (valid and invalid ones); none may
  be answered 5xx and the server must live on;
* hostile input: oversized texts and batches (413 with the limit), unknown language codes (400 listing the
  accepted ones), Unicode edge cases (RTL, CJK, emoji, combining marks, controls: translated), lone
  surrogates and empty or blank texts (400 saying so): never 5xx;
* overload: more concurrent requests than the queue admits get 429 with Retry-After, the admitted ones a
  translation;
* engine failure: the remote backend is killed mid-run: its specialist turns unready, answers 503 quickly
  with Retry-After while the other keeps serving, and recovers when the backend comes back on its port.

The tests run in file order: the backend is killed by the last one."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from moe_specialists.service.app import create_app
from moe_specialists.service.settings import Settings, SpecialistSpec
from tests.service.conftest import READY_TIMEOUT_S, VllmServer, free_port, wait_ready

pytestmark = pytest.mark.timeout(READY_TIMEOUT_S + 300)

LOCAL, REMOTE = "local-en-de", "remote-en-fr"
MAX_CHARS, MAX_BATCH_CHARS, MAX_BATCH, QUEUE, MAX_TOKENS = 200, 300, 4, 2, 8


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread (lifespan included)."""

    def __init__(self, app, port: int):
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(120)


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
    settings = Settings(
        specialists=[
            SpecialistSpec(name=LOCAL, path=str(tiny_model_dir), directions=["en-de"]),
            SpecialistSpec(name=REMOTE, path=backend.url, directions=["en-fr"]),
        ],
        dtype="float32", max_model_len=512, enforce_eager=True,
        max_chars_per_text=MAX_CHARS, max_chars_per_batch=MAX_BATCH_CHARS, max_batch_size=MAX_BATCH,
        max_queue_per_engine=QUEUE, default_max_tokens=4, max_tokens_limit=MAX_TOKENS,
        health_interval_s=1, remote_timeout_s=3, request_timeout_s=60, access_log=False,
    )
    app = create_app(settings)
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


def fuzz(strategy, budget: int, send) -> None:
    """Call ``send(case)`` on ``budget`` generated cases: reproducible (derandomized), no shrinking (``send``
    records every bad answer itself)."""

    @settings(max_examples=budget, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case) -> None:
        send(case)

    run()


def test_fuzz_openapi_never_5xx(gateway, client):
    """Valid (positive) and invalid (negative) requests from the OpenAPI schema: never 5xx, every 4xx says
    what is wrong, no stream ends in an error event; then the gateway still translates."""
    app, url = gateway
    schema = schemathesis.openapi.from_dict(openapi_with_libretranslate_body(url))
    schema.hook("flatmap_body")(steer_to_served_pairs)
    sent: dict[tuple[str, str, str], int] = {}
    statuses: dict[int, int] = {}
    translated = 0
    errors: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            op = result.ok()
            if op.path.startswith("/v2/"):  # DeepL's routes answer {"message": ...}: test_fuzz_compat.py fuzzes them
                continue
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                key = (op.method.upper(), op.path, mode.value)
                budget = FUZZ_BUDGET.get(key, 1 if mode is schemathesis.GenerationMode.POSITIVE else 0)
                if not budget:
                    continue

                def send(case, key=key) -> None:
                    nonlocal translated
                    r = case.call(base_url=url, session=session, timeout=60)
                    sent[key] = sent.get(key, 0) + 1
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    content_type = (r.headers.get("content-type") or [""])[0]  # lowercase keys, lists of values
                    stream_error = content_type.startswith("text/event-stream") and "event: error" in r.text
                    if r.status_code >= 500 or stream_error:
                        errors.append(f"{r.status_code} {r.text[:300]}\n{case.as_curl_command()}")
                    elif r.status_code >= 400 and not error_message(r):
                        errors.append(f"{r.status_code} without a message: {r.text[:300]}\n{case.as_curl_command()}")
                    elif r.status_code == 200 and key[0] == "POST":
                        translated += 1

                fuzz(op.as_strategy(generation_mode=mode), budget, send)
    total = sum(sent.values())
    print(f"fuzz: {total} requests ({translated} translated), statuses {dict(sorted(statuses.items()))}, "
          f"per operation {sent}")
    assert not errors, f"{len(errors)} bad answers of {total}:\n" + "\n\n".join(errors[:5])
    assert total >= 1000, sent
    assert_alive(client, app)


# ---- hostile input ----

LIMITS = [
    ({"text": "x" * (MAX_CHARS + 1)}, 413, f"limit is {MAX_CHARS}", MAX_CHARS),
    ({"text": "\u00e9" * (MAX_CHARS + 1)}, 413, f"limit is {MAX_CHARS}", MAX_CHARS),  # characters, not bytes
    ({"text": "👍" * (MAX_CHARS + 1)}, 413, f"limit is {MAX_CHARS}", MAX_CHARS),
    ({"text": ["x" * 150, "y" * 151]}, 413, f"limit is {MAX_BATCH_CHARS}", MAX_BATCH_CHARS),
    ({"text": ["a"] * (MAX_BATCH + 1)}, 413, f"limit is {MAX_BATCH}", MAX_BATCH),
    ({"text": "a", "max_tokens": MAX_TOKENS + 1}, 400, f"limit {MAX_TOKENS}", MAX_TOKENS),
]


@pytest.mark.parametrize(("extra", "status", "says", "limit"), LIMITS)
def test_oversized_input(client, extra, status, says, limit):
    r = translate(client, source="en", target="de", **extra)
    body = r.json()
    assert r.status_code == status and says in body["error"] and body["limit"] == limit, r.text


def test_oversized_libretranslate_413(client):
    r = client.post("/translate", json={"q": "x" * (MAX_CHARS + 1), "source": "en", "target": "de"})
    assert r.status_code == 413 and f"limit is {MAX_CHARS}" in r.json()["error"] and r.json()["limit"] == MAX_CHARS


# (EN, en-US, eng, "auto " are good codes since issue 15: codes are normalised with langcodes)
BAD_CODES = ["xx", "", "de\x00", "\u202ede", "🇩🇪", "d\u0301e", "zh-Hans", "klingon", "en-zz-zz", "ｄｅ"]


@pytest.mark.parametrize("code", BAD_CODES)
@pytest.mark.parametrize("field", ["source", "target"])
def test_bad_language_code_400(client, field, code):
    r = translate(client, **{"text": "Hello", "source": "en", "target": "de", field: code})
    body = r.json()
    assert r.status_code == 400 and body["code"] == "unknown_language", r.text
    assert f"unknown {field} language" in body["error"] and "accepted: " in body["error"]
    assert "en" in body["accepted"] and ("auto" in body["accepted"]) == (field == "source")
    r = client.post("/translate", json={"q": "Hello", "source": "en", "target": "de", field: code})
    assert r.status_code == 400 and "accepted: " in r.json()["error"], r.text


def test_bad_language_code_lone_surrogate_400(client):
    raw = '{"text": "Hello", "source": "en", "target": "d\\ud800"}'
    r = client.post("/v1/translate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "accepted: " in r.json()["error"], r.text


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


@pytest.mark.parametrize("raw", [
    '{"text": "lone \\ud800 surrogate", "source": "en", "target": "de"}',
    '{"text": ["fine", "\\udfff"], "source": "en", "target": "fr"}',
    '{"text": "low-high \\udc00\\ud800", "source": "auto", "target": "de"}',
    '{"text": "\\ud83d", "source": "en", "target": "de", "stream": true}',
])
def test_lone_surrogates_400(client, raw):
    """JSON may escape lone surrogates; they are not text (no UTF-8 form), so they are refused."""
    r = client.post("/v1/translate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "surrogate" in r.json()["error"], r.text


def test_lone_surrogate_libretranslate_400(client):
    raw = '{"q": "lone \\ud800", "source": "en", "target": "de"}'
    r = client.post("/translate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "surrogate" in r.json()["error"], r.text


def test_invalid_utf8_body_400(client):
    r = client.post("/v1/translate", content=b'{"text": "\xff\xfe", "source": "en", "target": "de"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"], r.text


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", ["Hello", ""]])
def test_empty_text_400(client, text):
    r = translate(client, text=text, source="en", target="de")
    assert r.status_code == 400 and r.json()["code"] == "empty_text" and "empty" in r.json()["error"], r.text
    r = client.post("/translate", json={"q": text, "source": "en", "target": "de"})
    assert r.status_code == 400 and "empty" in r.json()["error"], r.text


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
    assert ready.json()["specialists"][REMOTE]["state"] == "unreachable"
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
