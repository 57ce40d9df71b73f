"""Hostile input over real HTTP (uvicorn on 127.0.0.1), refused by the gateway before any engine runs: the
reliability gateway's specialists and limits (test_reliability.py), each served by an in-memory
``FakeEngine`` (tests/service/fake_engine.py: these tests check validation and error bodies, not vLLM).

Oversized texts and batches (413 with the limit), unknown language codes (400 listing the accepted ones),
lone surrogates, invalid UTF-8 and empty texts (400 saying so), blank texts answered as they are: never 5xx."""

from __future__ import annotations

import httpx
import pytest

from moe_specialists.service.app import create_app
from tests.service.conftest import (
    MAX_BATCH,
    MAX_BATCH_CHARS,
    MAX_CHARS,
    MAX_TOKENS,
    ServerThread,
    free_port,
    reliability_settings,
    wait_ready,
)
from tests.service.fake_engine import fake_engines


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    """A client of the gateway; the remote specialist's URL is never called (its engine is a fake too)."""
    app = create_app(reliability_settings(str(tiny_model_dir), "http://127.0.0.1:9"), engine_factory=fake_engines())
    port = free_port()
    with ServerThread(app, port), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        wait_ready(c)
        yield c


def translate(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/translate", json=body)


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


@pytest.mark.parametrize("text", ["", ["Hello", ""]])
def test_empty_text_400(client, text):
    r = translate(client, text=text, source="en", target="de")
    assert r.status_code == 400 and r.json()["code"] == "empty_text" and "empty" in r.json()["error"], r.text
    r = client.post("/translate", json={"q": text, "source": "en", "target": "de"})
    assert r.status_code == 400 and "empty" in r.json()["error"], r.text


@pytest.mark.parametrize("text", ["   ", "\n\t "])
def test_blank_text_answered_as_it_is(client, text):
    """Only whitespace: nothing to translate, the layout is the answer (no engine, no specialist)."""
    r = translate(client, text=text, source="en", target="de")
    assert r.status_code == 200, r.text
    (item,) = r.json()["translations"]
    assert (item["text"], item["route"], item["specialist"], item["segments"]) == (text, "none", "", 0)
    r = client.post("/translate", json={"q": text, "source": "en", "target": "de"})
    assert r.status_code == 200 and r.json()["translatedText"] == text, r.text
