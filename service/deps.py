"""Typed FastAPI dependencies: the app's pool, settings, metrics and translator live on ``app.state``
(built by the lifespan), never in module globals. They are ``async def``: FastAPI runs a plain ``def``
dependency in a worker thread, a thread hand-off per dependency and request on the hot path."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from moe_specialists.service.engines.pool import EnginePool
from moe_specialists.service.errors import ApiError
from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.quotas import QuotaExceeded, Quotas
from moe_specialists.service.settings import Settings
from moe_specialists.service.translation import Translator


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_pool(request: Request) -> EnginePool:
    return request.app.state.pool


async def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


async def get_translator(request: Request) -> Translator:
    return request.app.state.translator


def quotas_of(request: Request) -> Quotas:
    """The app's quota accounts (made on first use, beside the metrics the lifespan built)."""
    state = request.app.state
    if getattr(state, "quotas", None) is None:
        s = state.settings
        state.quotas = Quotas(s.quota_requests_per_minute, s.quota_characters_per_day, state.metrics)
    return state.quotas


async def get_quotas(request: Request) -> Quotas:
    return quotas_of(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[EnginePool, Depends(get_pool)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
TranslatorDep = Annotated[Translator, Depends(get_translator)]
QuotasDep = Annotated[Quotas, Depends(get_quotas)]


def charge(quotas: Quotas, key: str | None, characters: int = 0) -> None:
    """Count a request (and its characters) against the key's quotas, or 429 with Retry-After."""
    try:
        quotas.request(key)
        if characters:
            quotas.characters(key, characters)
    except QuotaExceeded as e:
        raise ApiError(429, f"quota_{e.kind}", e.message, headers={"Retry-After": str(e.retry_after_s)},
                       quota=e.kind) from None


def check_api_key(settings: Settings, key: str | None) -> None:
    """No keys configured: open. Otherwise 401 without a key, 403 with a wrong one."""
    if not settings.api_keys:
        return
    if not key:
        raise ApiError(
            401, "api_key_missing",
            "an API key is required: send 'Authorization: Bearer <key>', 'X-API-Key: <key>' or api_key in the body",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not any(hmac.compare_digest(key.encode(), k.encode()) for k in settings.api_keys):
        raise ApiError(403, "api_key_invalid", "the API key is not valid")


async def header_api_key(
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return x_api_key


HeaderKeyDep = Annotated[str | None, Depends(header_api_key)]


async def require_api_key(settings: SettingsDep, key: HeaderKeyDep) -> None:
    check_api_key(settings, key)


ApiKeyDep = Annotated[None, Depends(require_api_key)]
