"""DeepL's API v2, as deepl-python (``deepl.Translator(key, server_url=...)``) and other DeepL clients call it.

* ``POST /v2/translate``: JSON or form; ``text`` (a list, or one string); ``target_lang`` (upper or lower case,
  EN-US / EN-GB / PT-BR / ZH-HANT ... : regions are dropped, scripts kept); ``source_lang`` optional (detected);
  ``tag_handling`` html | xml (markup kept); ``split_sentences`` and ``preserve_formatting`` (``split_mode``,
  ``preserve``); ``glossary_id`` (needs ``source_lang``: ``glossary_terms``; the glossary routes are in
  ``deepl_glossaries``) -> ``{"translations": [{"detected_source_language", "text", "billed_characters"}]}``.
* ``GET /v2/languages?type=source|target`` (deepl-python sends ``type`` as a form body on the GET).
* ``GET /v2/usage`` -> ``{"character_count", "character_limit"}`` of the key's daily quota.
* The key: ``Authorization: DeepL-Auth-Key <key>`` (or ``auth_key`` in the body).
* Errors: ``{"message": "..."}`` with DeepL's status codes: 400 bad request, 403 key missing or wrong,
  413 too large, 429 too many requests, 456 character quota exceeded, 503 unavailable.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import langcodes
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moe_specialists.models.errors import describe_validation
from moe_specialists.models.languages import base_language
from moe_specialists.models.languages import language_name as lang_name
from moe_specialists.service.bodies import read_body
from moe_specialists.service.deps import charge, check_api_key, quotas_of
from moe_specialists.service.errors import ApiError, api_error
from moe_specialists.service.glossaries import owner_of
from moe_specialists.service.jobs import Job
from moe_specialists.service.markup import texts_of, translate_markup
from moe_specialists.service.routers.languages import served_languages
from moe_specialists.service.segments import SplitMode
from moe_specialists.service.terms import Terms
from moe_specialists.service.translation import Translator
from moe_specialists.service.translation_errors import TranslationError

DEEPL_STATUS = {401: 403, 403: 403, 404: 404, 413: 413, 422: 400, 503: 503, 504: 503}
# Target spellings DeepL lists for a language that has variants (its clients refuse plain EN and PT).
TARGET_VARIANTS = {"en": ["EN-GB", "EN-US"], "pt": ["PT-BR", "PT-PT"], "zh": ["ZH", "ZH-HANS"]}


def deepl_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status, headers=headers or {})


class DeepLRoute(APIRoute):
    """Every error of these routes in DeepL's shape and status codes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def deepl_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except (ApiError, TranslationError) as error:
                e = api_error(error)
                status = 456 if e.code == "quota_characters" else DEEPL_STATUS.get(e.status, e.status)
                return deepl_error(status, e.message, e.headers)
            except RequestValidationError as e:
                return deepl_error(400, f"Bad request: {describe_validation(e, most=5)}")

        return deepl_handler


router = APIRouter(prefix="/v2", tags=["deepl"], route_class=DeepLRoute)


class DeepLTranslateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # formality, context, ... accepted, unused
    text: list[str] = Field(min_length=1)
    target_lang: str
    source_lang: str | None = None
    tag_handling: str | None = None
    split_sentences: str | int | None = None
    preserve_formatting: bool | int | str | None = None
    glossary_id: str | None = None
    auth_key: str | None = None


# DeepL's split_sentences (https://developers.deepl.com/docs/xml-and-html-handling/html): "0" no splitting, "1"
# on punctuation and newlines (the default, and for tag_handling=xml), "nonewlines" on punctuation only,
# ignoring newlines (the default for tag_handling=html).
SPLIT_SENTENCES: dict[str, SplitMode] = {"0": "none", "1": "sentences", "nonewlines": "nonewlines"}


def split_mode(value: str | int | None, tag_handling: str | None) -> SplitMode:
    """The segmentation ``split_sentences`` asks for (its default depends on ``tag_handling``)."""
    if value is None or value == "":
        return "nonewlines" if tag_handling == "html" else "sentences"
    mode = SPLIT_SENTENCES.get(str(value).strip().lower())
    if mode is None:
        raise ApiError(400, "invalid_request", f"Bad request: split_sentences {str(value)[:20]!r}; accepted: "
                       f"{', '.join(SPLIT_SENTENCES)}")
    return mode


def preserve(value: bool | int | str | None) -> bool:
    """DeepL's preserve_formatting ("0"/"1", 0/1, false/true; default off): on, each sentence's translation
    keeps the source's first-letter case and adds no final punctuation the source lacks
    (``segments.keep_format``); off, the model's output is kept as it is. The text's whitespace and line
    breaks are the source's either way."""
    if value is None or value == "":
        return False
    word = str(value).strip().lower()
    if word in ("1", "true"):
        return True
    if word in ("0", "false"):
        return False
    raise ApiError(400, "invalid_request", f"Bad request: preserve_formatting {word[:20]!r}; accepted: 0, 1")


def glossary_terms(request: Request, key: str | None, glossary_id: str | None, source: str, target: str,
                   same: bool) -> Terms | None:
    """The terms of glossary ``glossary_id``'s dictionary for the request's pair (None without a glossary or
    when nothing is translated); a glossary needs an explicit source language, as DeepL's does."""
    if not glossary_id or same:
        return None
    if source == "auto":
        raise ApiError(400, "invalid_request", "Bad request: source_lang is required when a glossary_id is given")
    owner = owner_of(request.app.state.settings.api_keys, key)
    return request.app.state.glossaries.terms(owner, glossary_id, source, target)


def deepl_source(code: str) -> str:
    """How DeepL spells a source language: EN, DE, ZH (scripts upper-cased: SR-LATN)."""
    return code.upper()


def deepl_targets(code: str) -> list[str]:
    return TARGET_VARIANTS.get(code, [code.upper()])


async def _body(request: Request) -> dict[str, Any]:
    """JSON, or a form (``text`` repeated), or the query string of a GET."""
    fields, _ = await read_body(request, required=False, query=True, repeatable=["text"], prefix="Bad request: ")
    return fields


def _key(request: Request, data: dict[str, Any]) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("deepl-auth-key "):
        return auth[len("deepl-auth-key "):].strip()
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return data.get("auth_key") or request.headers.get("x-api-key")


def _authorise(request: Request, data: dict[str, Any]) -> str | None:
    key = _key(request, data)
    try:
        check_api_key(request.app.state.settings, key)
    except ApiError as e:
        raise ApiError(403, "forbidden", f"Authorization failure: {e.message} (DeepL-Auth-Key header)") from None
    return key


@router.post("/translate")
async def translate(request: Request) -> JSONResponse:
    data = await _body(request)
    key = _authorise(request, data)
    if isinstance(data.get("text"), str):
        data["text"] = [data["text"]]
    try:
        body = DeepLTranslateRequest.model_validate(data)
    except ValidationError as e:
        why = describe_validation(e, most=5)
        fields = "text, target_lang, source_lang, tag_handling"
        raise ApiError(400, "invalid_request", f"Bad request: {why} ({fields})") from None
    if body.tag_handling not in (None, "", "html", "xml"):
        raise ApiError(400, "invalid_request", f"Bad request: tag_handling {body.tag_handling!r}; accepted: html, xml")
    split = split_mode(body.split_sentences, body.tag_handling)
    keep = preserve(body.preserve_formatting)
    translator: Translator = request.app.state.translator
    charge(quotas_of(request), key, sum(len(t) for t in body.text))
    source, target, same = translator.pair(body.source_lang or "auto", body.target_lang)
    terms = glossary_terms(request, key, body.glossary_id, source, target, same)
    mode = body.tag_handling or None
    out = []
    if mode:
        for text in body.text:
            src = source
            if src == "auto":
                sample = " ".join(texts_of(text, mode))[:2000] or text[:2000]
                src = translator.detect_for([sample], target)[0].language
            if same:
                translated = text
            else:
                async def run(texts: list[str], src: str = src) -> list[str]:
                    found = await translator.translate_all(texts, src, target, split, True, keep, terms)
                    return [i.text for i in found]

                translated = await translate_markup(text, run, mode)  # type: ignore[arg-type]
            out.append({"detected_source_language": deepl_source(base_language(src)), "text": translated,
                        "billed_characters": len(text)})
    elif same:
        out = [{"detected_source_language": deepl_source(base_language(source)), "text": t,
                "billed_characters": len(t)} for t in body.text]
    else:
        items = await translator.translate(Job(list(body.text), source, target, split=split,
                                               preserve_formatting=keep, terms=terms))
        out = [{"detected_source_language": deepl_source(base_language(i.source)), "text": i.text,
                "billed_characters": len(t)} for i, t in zip(items, body.text, strict=True)]
    return JSONResponse({"translations": out})


@router.get("/languages", operation_id="deepl_languages")
async def languages(request: Request) -> list[dict]:
    data = await _body(request)
    _authorise(request, data)
    kind = str(data.get("type", "source")).lower()
    if kind not in ("source", "target"):
        raise ApiError(400, "invalid_request", f"Bad request: type {kind!r}; accepted: source, target")
    langs, _ = served_languages(request.app.state.translator)
    if kind == "source":
        return [{"language": deepl_source(lang.code), "name": lang.name} for lang in langs if lang.targets]
    targets = sorted({t for lang in langs for t in lang.targets})
    out = []
    for code in targets:
        for spelling in deepl_targets(code):
            name = langcodes.Language.get(spelling).display_name("en") if spelling != code.upper() else lang_name(code)
            out.append({"language": spelling, "name": name, "supports_formality": False})
    return out


@router.get("/usage", operation_id="deepl_usage")
async def usage(request: Request) -> dict:
    data = await _body(request)
    key = _authorise(request, data)
    count, limit = quotas_of(request).usage(key)
    return {"character_count": count, "character_limit": limit if limit is not None else 10**12}


# DeepL accepts POST on these too.
router.add_api_route("/languages", languages, methods=["POST"], operation_id="deepl_languages_post",
                     include_in_schema=False)
router.add_api_route("/usage", usage, methods=["POST"], operation_id="deepl_usage_post", include_in_schema=False)
