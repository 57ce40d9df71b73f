"""LibreTranslate's API, as its clients (libretranslatepy, browser extensions, Weblate, SubtitleEdit, ...) call
it: bodies as JSON, form or multipart; ``api_key`` in the body (or our headers); errors ``{"error": "..."}``.

* ``POST /translate`` ``{q, source, target, format, alternatives}`` -> ``{"translatedText", "detectedLanguage"
  (source auto), "alternatives" (when asked: [] since the engines give one answer)}``; a list ``q`` gives lists.
  Each text is cut into sentences and rebuilt with its layout (as LibreTranslate's sentence boundary detection);
  ``format: html`` keeps the markup (``service.markup``); source == target returns the text. Extension:
  ``glossary_id`` (a DeepL glossary of this key, ``/v2/glossaries``) enforces its terms; it needs a source.
* ``POST /detect`` ``{q}`` -> ``[{"language", "confidence" (0-100)}]`` (a list ``q``: one list per text).
* ``GET /languages`` -> ``[{"code", "name", "targets"}]`` with LibreTranslate 1.7's spellings (zh-Hans, zh-Hant).
* ``POST /translate_file`` (multipart ``file``: .txt .html .srt .md) -> ``{"translatedFileUrl"}``, fetched from
  ``GET /download_file/{name}``.
* ``GET /frontend/settings``, ``GET /health``, ``GET /spec``; ``POST /suggest`` answers 403 (suggestions off).
* CORS: open to ``settings.libretranslate_cors_origins`` (default every origin), preflights answered.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from moe_specialists.models.errors import describe_validation
from moe_specialists.models.languages import language_name
from moe_specialists.service.bodies import read_body
from moe_specialists.service.deps import HeaderKeyDep, QuotasDep, SettingsDep, TranslatorDep, charge, check_api_key
from moe_specialists.service.documents import (
    FILE_TYPES,
    MEDIA_TYPES,
    FileStore,
    attachment,
    check_file,
    detection_sample,
    file_type,
    read_text,
    translate_file,
)
from moe_specialists.service.errors import ApiError
from moe_specialists.service.glossaries import owner_of
from moe_specialists.service.jobs import Job
from moe_specialists.service.markup import texts_of, translate_markup
from moe_specialists.service.routers.languages import served_languages
from moe_specialists.service.schemas import DetectedLanguage, LibreTranslateDetectRequest, LibreTranslateRequest
from moe_specialists.service.settings import Settings
from moe_specialists.service.terms import Terms
from moe_specialists.service.translation import Translator

router = APIRouter(tags=["libretranslate"])

PATHS = ("/translate", "/detect", "/languages", "/translate_file", "/download_file", "/frontend/settings",
         "/health", "/spec", "/suggest")


def lt_code(code: str) -> str:
    """Our canonical code in LibreTranslate 1.7's spelling: Chinese is zh-Hans / zh-Hant."""
    return "zh-Hans" if code == "zh" else code


async def _read(request: Request, model: type[BaseModel], fields: str, settings: Settings, key: str | None) -> Any:
    """The JSON or form body as ``model`` (a 400 naming ``fields`` when it is not one), its API key checked."""
    data, _ = await read_body(request, repeatable=["q"], expects="q, source, target")
    try:
        body = model.model_validate(data)
    except ValidationError as e:
        why = describe_validation(e, most=5)
        raise ApiError(400, "invalid_request", f"invalid request: {why} (fields: {fields})") from None
    check_api_key(settings, body.api_key or key)
    return body


def _detected(d: DetectedLanguage | None) -> dict:
    return {"language": lt_code(d.language), "confidence": round(d.confidence * 100, 1)} if d else {}


async def _translate_html(translator: Translator, doc: str, source: str, target: str,
                          terms: Terms | None = None) -> tuple[str, dict | None]:
    detected = None
    if source == "auto":
        text = " ".join(texts_of(doc))
        if not text.strip():
            return doc, None
        (d,) = translator.detect_for([text[:2000]], target)
        detected, source = d, d.language

    async def run(texts: list[str]) -> list[str]:
        return [item.text for item in await translator.translate_all(texts, source, target, markup=True,
                                                                     terms=terms)]

    return await translate_markup(doc, run), _detected(detected) if detected else None


@router.post("/translate")
async def translate(
    request: Request, translator: TranslatorDep, settings: SettingsDep, key: HeaderKeyDep, quotas: QuotasDep
) -> JSONResponse:
    body: LibreTranslateRequest = await _read(request, LibreTranslateRequest, "q, source, target, format, alternatives",
                                              settings, key)
    texts = [body.q] if isinstance(body.q, str) else body.q
    charge(quotas, body.api_key or key, sum(len(t) for t in texts))
    source, target, same = translator.pair(body.source, body.target)
    terms = None
    if body.glossary_id and not same:
        if source == "auto":
            raise ApiError(400, "invalid_request", "a glossary_id needs an explicit source language (not auto)")
        owner = owner_of(settings.api_keys, body.api_key or key)
        terms = request.app.state.glossaries.terms(owner, body.glossary_id, source, target)
    detected: list[dict | None] = [None] * len(texts)
    specialists: list[str] = []
    if same:
        out_texts = list(texts)
    elif body.format == "html":
        if not texts:
            raise ApiError(400, "empty_batch", "no text to translate: send a string or a non-empty list")
        out_texts = []
        for i, doc in enumerate(texts):
            translated, detected[i] = await _translate_html(translator, doc, source, target, terms)
            out_texts.append(translated)
    else:
        items = await translator.translate(Job(texts, source, target, terms=terms))
        out_texts = [i.text for i in items]
        detected = [_detected(i.detected_language) if source == "auto" else None for i in items]
        specialists = [i.specialist for i in items if i.specialist]
    headers = {"X-Specialist": ",".join(dict.fromkeys(specialists))} if specialists else {}
    single = isinstance(body.q, str)
    out: dict[str, Any] = {"translatedText": out_texts[0] if single else out_texts}
    if body.source.strip().lower() == "auto":
        found = [d or {"language": lt_code(target), "confidence": 100.0} for d in detected]
        out["detectedLanguage"] = found[0] if single else found
    if body.alternatives > 0:
        out["alternatives"] = [] if single else [[] for _ in texts]
    return JSONResponse(out, headers=headers)


@router.post("/detect")
async def detect(
    request: Request, translator: TranslatorDep, settings: SettingsDep, key: HeaderKeyDep, quotas: QuotasDep
) -> list:
    body: LibreTranslateDetectRequest = await _read(request, LibreTranslateDetectRequest, "q", settings, key)
    texts = [body.q] if isinstance(body.q, str) else body.q
    if not texts or len(texts) > settings.max_batch_size:
        raise ApiError(400, "invalid_request", f"q: send one text or a list of 1 to {settings.max_batch_size}")
    if settings.max_chars_per_text is not None and any(len(t) > settings.max_chars_per_text for t in texts):
        raise ApiError(413, "text_too_long", f"a text is over the limit of {settings.max_chars_per_text} characters",
                       limit=settings.max_chars_per_text)
    charge(quotas, body.api_key or key)
    found = [[_detected(d)] for d in translator.detect_for(texts, None)]
    return found[0] if isinstance(body.q, str) else found


@router.get("/languages")
async def languages(translator: TranslatorDep) -> list[dict]:
    langs, _ = served_languages(translator)
    return [{"code": lt_code(lang.code), "name": lang.name, "targets": [lt_code(t) for t in lang.targets]}
            for lang in langs]


def _file_store(request: Request) -> FileStore:
    state = request.app.state
    if getattr(state, "files", None) is None:
        state.files = FileStore()
    return state.files


@router.post("/translate_file")
async def translate_file_route(
    request: Request, translator: TranslatorDep, settings: SettingsDep, key: HeaderKeyDep, quotas: QuotasDep
) -> dict:
    data, files = await read_body(request, repeatable=["q"], expects="q, source, target")
    check_api_key(settings, data.get("api_key") or key)
    upload = files.get("file")
    if upload is None or not upload.filename:
        raise ApiError(400, "invalid_request", f"send the file as multipart field 'file' ({', '.join(FILE_TYPES)})")
    name, suffix = file_type(upload.filename)
    text = read_text(await upload.read(4 * settings.max_file_chars + 1), settings.max_file_chars)
    check_file(suffix, text)
    charge(quotas, data.get("api_key") or key, len(text))
    source, target, same = translator.pair(str(data.get("source", "auto")), str(data.get("target", "")))
    if source == "auto":
        source = translator.detect_for([detection_sample(suffix, text) or "x"], target)[0].language

    async def run(texts: list[str]) -> list[str]:
        markup = suffix in (".html", ".htm")
        return [item.text for item in await translator.translate_all(texts, source, target, markup=markup)]

    translated = text if same else await translate_file(name, text, run)
    stored = _file_store(request).put(name, translated.encode(), MEDIA_TYPES[suffix])
    return {"translatedFileUrl": f"{str(request.base_url).rstrip('/')}/download_file/{stored}"}


@router.get("/download_file/{name}")
async def download_file(name: str, request: Request) -> Response:
    stored = _file_store(request).get(name)
    if stored is None:
        raise ApiError(404, "not_found", f"no translated file {name[:80]!r} (files are kept for an hour)")
    return Response(stored.content, media_type=f"{stored.media_type}; charset=utf-8",
                    headers={"Content-Disposition": attachment(stored.name)})


@router.get("/frontend/settings")
async def frontend_settings(settings: SettingsDep, translator: TranslatorDep) -> dict:
    accepted = translator.accepted()
    target = "en" if "en" in accepted else (accepted[0] if accepted else "en")
    return {
        "charLimit": settings.max_chars_per_text or settings.max_chars_per_batch,
        "frontendTimeout": 500,
        "apiKeys": bool(settings.api_keys),
        "keyRequired": bool(settings.api_keys),
        "suggestions": False,
        "filesTranslation": True,
        "supportedFilesFormat": list(FILE_TYPES),
        "language": {"source": {"code": "auto", "name": "Auto Detect"},
                     "target": {"code": lt_code(target), "name": language_name(target)}},
    }


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/spec")
async def spec(request: Request) -> dict:
    return request.app.openapi()


@router.post("/suggest")
async def suggest() -> JSONResponse:
    return JSONResponse({"error": "Suggestions are disabled on this server."}, status_code=403)


class CompatCors:
    """CORS for LibreTranslate's paths only: preflights (OPTIONS) answered 204, answers carry
    Access-Control-Allow-Origin. ``origins`` ["*"]: any origin."""

    def __init__(self, app: ASGIApp, origins: list[str]):
        self.app, self.origins = app, origins

    def _allowed(self, origin: str | None) -> str | None:
        if origin is None or not self.origins:
            return None
        return "*" if "*" in self.origins else (origin if origin in self.origins else None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path or not any(path == p or path.startswith(p + "/") for p in PATHS):
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        allowed = self._allowed(headers.get("origin"))
        if scope["method"] == "OPTIONS":
            out = {"Allow": "GET, POST, OPTIONS"}
            if allowed:
                out |= {"Access-Control-Allow-Origin": allowed, "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                        "Access-Control-Allow-Headers": headers.get("access-control-request-headers", "*"),
                        "Access-Control-Max-Age": "600"}
            await Response(status_code=204, headers=out)(scope, receive, send)
            return

        async def with_cors(message: dict) -> None:
            present = any(k.lower() == b"access-control-allow-origin" for k, _ in message.get("headers", []))
            if message["type"] == "http.response.start" and allowed and not present:
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"access-control-allow-origin", allowed.encode()),
                                      (b"access-control-expose-headers", b"X-Specialist, Retry-After")]
                if allowed != "*":
                    message["headers"].append((b"vary", b"Origin"))
            await send(message)

        await self.app(scope, receive, with_cors)
