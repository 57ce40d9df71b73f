"""Error answers: every error body is ``{"error": "<what is wrong and what is accepted>", "code": ..., ...}``
(``error`` is a string, as LibreTranslate clients expect). Input problems are 4xx, engine problems 503 with
Retry-After; nothing escapes as a bare 500. The translation flow's domain errors
(``service.translation_errors``) get their status and headers here, once: ``api_error``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from moe_specialists.service.translation_errors import (
    InvalidInput,
    NotFound,
    Overloaded,
    ShuttingDown,
    TimedOut,
    TooLarge,
    TranslationError,
    Unavailable,
)

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> JSONResponse:
        body = {"error": self.message, "code": self.code, **self.extra}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# The status of each kind of translation refusal (a subclass answers as its nearest listed ancestor).
STATUS: dict[type[TranslationError], int] = {
    InvalidInput: 400, NotFound: 404, TooLarge: 413, Overloaded: 429, Unavailable: 503, TimedOut: 504,
}


def api_error(e: ApiError | TranslationError) -> ApiError:
    """The HTTP answer to an error: a translation refusal gets its kind's status, Retry-After when it says
    when to retry, and ``Connection: close`` while the gateway shuts down; an ``ApiError`` is one already."""
    if isinstance(e, ApiError):
        return e
    status = next(STATUS[kind] for kind in type(e).__mro__ if kind in STATUS)
    headers = {}
    if isinstance(e, (Overloaded, Unavailable)) and e.retry_after_s is not None:
        headers["Retry-After"] = str(e.retry_after_s)
    if isinstance(e, ShuttingDown):
        headers["Connection"] = "close"
    return ApiError(status, e.code, e.message, headers=headers, **e.details)


def _loc(loc: tuple | list) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def validation_error(exc: RequestValidationError) -> JSONResponse:
    details = [{"field": _loc(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")}
               for e in exc.errors()]
    if any(d["type"] == "json_invalid" for d in details):
        return ApiError(400, "invalid_json", "the request body is not valid JSON", details=details).response()
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return ApiError(422, "invalid_request", f"invalid request: {summary}", details=details).response()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(TranslationError)
    async def _translation_error(request: Request, exc: TranslationError) -> JSONResponse:
        return api_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{exc.detail}: {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(
            exc.detail
        )
        return ApiError(exc.status_code, code, message, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return ApiError(500, "internal", "internal error (logged); please report it").response()
