"""DeepL's document API, as deepl-python's ``translate_document`` calls it (jobs in ``service.document_jobs``,
files in ``service.documents``: .txt, .html/.htm, .srt, .md, through the same segmentation as texts).

* ``POST /v2/document`` (multipart: ``file``, ``target_lang``, ``source_lang`` optional, ``glossary_id`` (needs
  ``source_lang``), ``filename``, ``output_format`` (only the file's own type)) -> ``{document_id, document_key}``;
  the file is checked (type, UTF-8, ``max_file_chars``, SubRip timings, languages, glossary) before it is
  accepted, its characters charged to the key's quota, then translated in the background.
* ``POST /v2/document/{id}`` (``document_key``) -> ``{document_id, status: queued | translating | done | error,
  seconds_remaining, billed_characters, error_message}``; it waits up to ``STATUS_WAIT_S`` for a running job to
  finish, so a small document is done on the first poll (deepl-python polls every 5 s).
* ``POST /v2/document/{id}/result`` (``document_key``) -> the translated file, once (then the document is gone);
  503 while it is not done (deepl-python's ``DocumentNotReadyException``).

Errors in DeepL's shape (``DeepLRoute``); an unknown id or a wrong key is a 404."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from moe_specialists.service.bodies import read_body
from moe_specialists.service.deps import charge, quotas_of
from moe_specialists.service.document_jobs import DocumentJob, DocumentJobs, patiently
from moe_specialists.service.documents import (
    FILE_TYPES,
    MEDIA_TYPES,
    attachment,
    check_file,
    detection_sample,
    file_type,
    read_text,
    translate_file,
)
from moe_specialists.service.errors import ApiError
from moe_specialists.service.glossaries import owner_of
from moe_specialists.service.routers.deepl import DeepLRoute, _authorise, _body, glossary_terms
from moe_specialists.service.translation import Translator

router = APIRouter(prefix="/v2", tags=["deepl"], route_class=DeepLRoute)
STATUS_WAIT_S = 2.0


def _jobs(request: Request) -> DocumentJobs:
    return request.app.state.documents


@router.post("/document")
async def upload(request: Request) -> dict:
    data, files = await read_body(request, expects="file, target_lang", prefix="Bad request: ")
    key = _authorise(request, data)
    settings = request.app.state.settings
    upload = files.get("file")
    if upload is None:
        raise ApiError(400, "invalid_request", f"Bad request: send the document as multipart field 'file' "
                       f"({', '.join(FILE_TYPES)}) with target_lang")
    name, suffix = file_type(str(data.get("filename") or upload.filename or ""))
    wanted = str(data.get("output_format") or "").lower().lstrip(".")
    if wanted and "." + wanted != suffix:
        raise ApiError(400, "invalid_request", f"Bad request: output_format {wanted[:20]!r}: a {suffix} document is "
                       f"translated into {suffix[1:]} only")
    text = read_text(await upload.read(4 * settings.max_file_chars + 1), settings.max_file_chars)
    check_file(suffix, text)
    if not str(data.get("target_lang") or "").strip():
        raise ApiError(400, "invalid_request", "Bad request: target_lang is required")
    translator: Translator = request.app.state.translator
    source, target, same = translator.pair(str(data.get("source_lang") or "auto"), str(data["target_lang"]))
    terms = glossary_terms(request, key, data.get("glossary_id"), source, target, same)
    charge(quotas_of(request), key, len(text))
    if source == "auto" and not same:
        source = translator.detect_for([detection_sample(suffix, text) or "x"], target)[0].language
    markup = suffix in (".html", ".htm")
    split = "nonewlines" if markup else "sentences"

    async def chunk(texts: list[str]) -> list[str]:
        found = await translator.translate_all(texts, source, target, split, markup, terms=terms)
        return [item.text for item in found]

    async def work() -> str:
        if same:
            return text
        return await translate_file(name, text, patiently(chunk, time.monotonic() + settings.request_timeout_s))

    owner = owner_of(settings.api_keys, key)
    job = _jobs(request).start(owner, name, MEDIA_TYPES[suffix], len(text), work)
    return {"document_id": job.id, "document_key": job.key}


async def _job(request: Request, document_id: str) -> DocumentJob:
    data = await _body(request)
    key = _authorise(request, data)
    owner = owner_of(request.app.state.settings.api_keys, key)
    return _jobs(request).get(owner, document_id, data.get("document_key"))


@router.post("/document/{document_id}")
async def status(document_id: str, request: Request) -> dict:
    job = await _job(request, document_id)
    await _jobs(request).wait(job, STATUS_WAIT_S)
    out: dict = {"document_id": job.id, "status": job.status}
    if job.status == "done":
        out["billed_characters"] = job.characters
    elif job.status == "error":
        out["error_message"] = job.error
    else:
        out["seconds_remaining"] = None  # unknown
    return out


@router.post("/document/{document_id}/result")
async def result(document_id: str, request: Request) -> Response:
    job = await _job(request, document_id)
    if job.status == "error":
        raise ApiError(400, "document_failed", f"the document was not translated: {job.error}")
    if job.status != "done":
        raise ApiError(503, "document_not_ready", f"Document not ready: {job.status}; poll "
                       f"/v2/document/{job.id} until its status is done", headers={"Retry-After": "1"})
    content = _jobs(request).take(job)
    return Response(content, media_type=f"{job.media_type}; charset=utf-8",
                    headers={"Content-Disposition": attachment(job.name)})
