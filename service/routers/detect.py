"""POST /v1/detect: the language of one text or a batch, among the served languages (or, with ``target``,
among the served sources of that target)."""

from __future__ import annotations

from fastapi import APIRouter

from moe_specialists.service.deps import ApiKeyDep, SettingsDep, TranslatorDep
from moe_specialists.service.errors import ApiError
from moe_specialists.service.schemas import DetectRequest, DetectResponse

router = APIRouter(prefix="/v1", tags=["detect"])


@router.post("/detect", response_model=DetectResponse)
async def detect(body: DetectRequest, translator: TranslatorDep, settings: SettingsDep, _: ApiKeyDep) -> DetectResponse:
    texts = [body.text] if isinstance(body.text, str) else body.text
    if not texts or len(texts) > settings.max_batch_size:
        raise ApiError(400, "invalid_request", f"text: send one text or a list of 1 to {settings.max_batch_size}")
    for i, text in enumerate(texts):
        if settings.max_chars_per_text is not None and len(text) > settings.max_chars_per_text:
            raise ApiError(413, "text_too_long", f"text {i} has {len(text)} characters; the limit is "
                           f"{settings.max_chars_per_text} per text", limit=settings.max_chars_per_text, index=i)
    return DetectResponse(detections=translator.detect_for(texts, body.target))
