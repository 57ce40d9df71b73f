"""LibreTranslate-compatible POST /translate and GET /languages, so LibreTranslate clients work unchanged.

Body as JSON or form (q: a string or a list, source ("auto" allowed), target, format, api_key); answer
``{"translatedText": ..., "detectedLanguage": {"language", "confidence" (0-100)}}`` (lists for a list q).
``format: html`` is passed through as text (markup is not parsed)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from moe_specialists.service.deps import HeaderKeyDep, SettingsDep, TranslatorDep, check_api_key
from moe_specialists.service.errors import ApiError
from moe_specialists.service.routers.languages import served_languages
from moe_specialists.service.schemas import LibreTranslateRequest, TranslationItem
from moe_specialists.service.translation import Job

router = APIRouter(tags=["libretranslate"])


async def _read_body(request: Request) -> LibreTranslateRequest:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            data: dict = {k: v for k, v in form.items() if isinstance(v, str)}
            if len(qs := form.getlist("q")) > 1:
                data["q"] = qs
        else:
            data = json.loads(await request.body() or b"null")
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_request", "the body must be a JSON object with q, source and target")
        return LibreTranslateRequest.model_validate(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()[:5])
        raise ApiError(
            400, "invalid_request", f"invalid request: {problems} (fields: q, source, target, format, api_key)"
        ) from None


def _detected(item: TranslationItem) -> dict:
    d = item.detected_language
    return {"language": d.language, "confidence": round(d.confidence * 100)} if d else {}


@router.post("/translate")
async def translate(
    request: Request, translator: TranslatorDep, settings: SettingsDep, key: HeaderKeyDep
) -> JSONResponse:
    body = await _read_body(request)
    check_api_key(settings, body.api_key or key)
    texts = [body.q] if isinstance(body.q, str) else body.q
    items = await translator.translate(Job(texts, body.source, body.target))
    headers = {"X-Specialist": ",".join(dict.fromkeys(i.specialist for i in items))}
    if isinstance(body.q, str):
        out: dict = {"translatedText": items[0].text}
        if body.source == "auto":
            out["detectedLanguage"] = _detected(items[0])
    else:
        out = {"translatedText": [i.text for i in items]}
        if body.source == "auto":
            out["detectedLanguage"] = [_detected(i) for i in items]
    return JSONResponse(out, headers=headers)


@router.get("/languages")
async def languages(translator: TranslatorDep) -> list[dict]:
    langs, _ = served_languages(translator)
    return [{"code": lang.code, "name": lang.name, "targets": lang.targets} for lang in langs]
