"""OpenAPI fuzz of the LibreTranslate, DeepL, detection and web routes (test_reliability.py fuzzes /v1/translate):
schemathesis generates valid and invalid requests from the served schema, completed with the bodies these
routes read by hand (JSON, form, multipart); none may be answered 5xx, every error must say what is wrong
({"error": ...} or, on /v2 and /v3, {"message": ...}); then the gateway still translates."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st

from moe_specialists.service.routers.deepl import DeepLTranslateRequest
from moe_specialists.service.schemas import LibreTranslateDetectRequest, LibreTranslateRequest
from tests.service.conftest import READY_TIMEOUT_S
from tests.service.fuzzing import fuzz_operations
from tests.service.servers import gateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(READY_TIMEOUT_S + 600)]

BUDGET = {  # examples per (method, path, mode); operations not listed: one positive example
    ("POST", "/translate", "positive"): 150, ("POST", "/translate", "negative"): 80,
    ("POST", "/detect", "positive"): 60, ("POST", "/detect", "negative"): 40,
    ("POST", "/translate_file", "positive"): 60, ("POST", "/translate_file", "negative"): 40,
    ("POST", "/v2/translate", "positive"): 150, ("POST", "/v2/translate", "negative"): 80,
    ("GET", "/v2/languages", "positive"): 10, ("GET", "/v2/languages", "negative"): 10,
    ("POST", "/v1/detect", "positive"): 60, ("POST", "/v1/detect", "negative"): 40,
    ("GET", "/download_file/{name}", "positive"): 10,
}
SKIP = {"/v1/translate", "/metrics"}  # fuzzed in test_reliability.py; /metrics is not input-driven


@pytest.fixture(scope="module")
def url(tiny_model_dir, tmp_path_factory):
    with gateway(tiny_model_dir, tmp_path_factory.mktemp("fuzz-compat"), max_chars_per_text=300,
                 max_chars_per_batch=600, max_file_chars=2000, request_timeout_s=60) as (_, base):
        yield base


def schema_with_bodies(url: str) -> dict:
    """The served schema plus the bodies read by hand (FastAPI cannot document them)."""
    spec = httpx.get(f"{url}/openapi.json").raise_for_status().json()

    def body(path: str, model, media: tuple[str, ...] = ("application/json", "application/x-www-form-urlencoded")):
        schema = model.model_json_schema()
        spec.setdefault("components", {}).setdefault("schemas", {}).update(schema.pop("$defs", {}))
        spec["paths"][path]["post"]["requestBody"] = {"required": True, "content": {m: {"schema": schema}
                                                                                    for m in media}}

    body("/translate", LibreTranslateRequest)
    body("/detect", LibreTranslateDetectRequest)
    body("/v2/translate", DeepLTranslateRequest)
    spec["paths"]["/translate_file"]["post"]["requestBody"] = {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}, "source": {"type": "string"},
            "target": {"type": "string"}}}}}}
    spec["paths"]["/v2/languages"]["get"]["parameters"] = [
        {"name": "type", "in": "query", "required": False, "schema": {"type": "string", "enum": ["source", "target"]}}]
    return spec


PAIRS = {"source": ["en", "auto", "DE", "zh-Hans", "pb"], "target": ["de", "fr", "pt-BR", "zt"],
         "source_lang": ["EN", "FR"], "target_lang": ["DE", "EN-US", "PT-BR", "ZH-HANT"]}


def steer(context, body):
    """Besides each generated body, also try it with served language codes, so that texts reach the engine."""
    if not isinstance(body, dict):
        return st.just(body)
    fields = {k: st.sampled_from(v) for k, v in PAIRS.items() if k in body or k in ("target", "target_lang")}
    fields = {k: v for k, v in fields.items()
              if (k in ("source_lang", "target_lang")) == context.operation.path.startswith("/v2")}
    if not fields:
        return st.just(body)
    return st.one_of(st.just(body), st.fixed_dictionaries(fields).map(lambda d: body | d))


def says_what(r, path: str) -> bool:
    """The error body names the problem: {"message": ...} on DeepL's /v2 routes, {"error": ...} elsewhere."""
    try:
        payload = r.json()
    except ValueError:
        return False
    field = "message" if path.startswith(("/v2/", "/v3/")) else "error"  # DeepL's shape on its routes
    message = payload.get(field) if isinstance(payload, dict) else None
    return isinstance(message, str) and bool(message)


def test_fuzz_compat_routes_never_5xx(url):
    schema = schemathesis.openapi.from_dict(schema_with_bodies(url))
    schema.hook("flatmap_body")(steer)

    def judge(key, r) -> str | None:
        if r.status_code >= 500:
            return "server error"
        if r.status_code >= 400 and r.status_code != 405 and not says_what(r, key[1]):
            return "an error without a message"
        return None

    result = fuzz_operations(schema, url, BUDGET, lambda path: path in SKIP, judge)
    print(result.summary())
    assert not result.errors, result.bad_answers()
    assert result.total >= 700, result.sent
    assert result.statuses.get(200, 0) >= 100, result.statuses  # valid requests reached the engine (155 measured)
    r = httpx.post(f"{url}/translate", json={"q": "Hello", "source": "en", "target": "de"}, timeout=60)
    assert r.status_code == 200 and "translatedText" in r.json()
