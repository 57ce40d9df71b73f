"""POST /v1/translate: one text or a batch, each cut into sentences and rebuilt (``service.segments``);
``stream: true`` answers server-sent events, segment by segment (``service.streaming``)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from moe_specialists.service.deps import ApiKeyDep, HeaderKeyDep, QuotasDep, TranslatorDep, charge
from moe_specialists.service.errors import ApiError
from moe_specialists.service.jobs import Job
from moe_specialists.service.schemas import TranslateRequest, TranslateResponse
from moe_specialists.service.streaming import stream

router = APIRouter(prefix="/v1", tags=["translate"])

ERRORS = {
    400: {"description": "unknown or unserved language, empty text or a lone surrogate, bad options"},
    401: {"description": "API key missing"},
    403: {"description": "API key wrong"},
    413: {"description": "text or batch over the limit"},
    429: {"description": "engine queue full, or the key's quota spent (Retry-After)"},
    503: {"description": "engine not ready (Retry-After)"},
    504: {"description": "timeout"},
}


def _specialists(names: list[str]) -> str:
    return ",".join(dict.fromkeys(n for n in names if n))


@router.post("/translate", response_model=TranslateResponse, responses=ERRORS)
async def translate(
    body: TranslateRequest, translator: TranslatorDep, _: ApiKeyDep, key: HeaderKeyDep, quotas: QuotasDep,
    response: Response,
):
    texts = [body.text] if isinstance(body.text, str) else body.text
    charge(quotas, key, sum(len(t) for t in texts))
    job = Job(texts, body.source, body.target, body.max_tokens, body.sampling, body.specialist)
    if body.stream:
        if not isinstance(body.text, str):
            raise ApiError(400, "stream_batch", "streaming takes one text (a string); send a batch without stream")
        specialist, events, slot = await stream(translator, job)
        return StreamingResponse(
            events, media_type="text/event-stream",
            headers={"X-Specialist": specialist, "Cache-Control": "no-cache"},
            background=BackgroundTask(slot.close),
        )
    items = await translator.translate(job)
    specialist = _specialists([item.specialist for item in items])
    response.headers["X-Specialist"] = specialist
    return TranslateResponse(translations=items, target=job.target, specialist=specialist)
