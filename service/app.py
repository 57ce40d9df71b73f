"""The app factory: wiring only. ``create_app(settings)`` builds a FastAPI app whose lifespan starts the
engine pool (in the background: /healthz answers at once, /readyz turns 200 when engines are ready) and
closes it on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moe_specialists.models.registry.store import Registry
from moe_specialists.service.cache import TranslationCache
from moe_specialists.service.document_jobs import DocumentJobs
from moe_specialists.service.engines.pool import EngineFactory, EnginePool, vllm_engine
from moe_specialists.service.errors import install_error_handlers
from moe_specialists.service.glossaries import GlossaryStore
from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.routers import (
    deepl,
    deepl_documents,
    deepl_glossaries,
    detect,
    health,
    languages,
    libretranslate,
    specialists,
    translate,
    web,
)
from moe_specialists.service.settings import Settings, SpecialistSpec, load_settings
from moe_specialists.service.translation import Translator

log = logging.getLogger(__name__)


def specialist_specs(settings: Settings) -> list[SpecialistSpec]:
    """Explicit specialists, then every registry entry whose name is not taken already. Plans are checked and
    their views made when each engine starts (``service.plans``), not here: an unusable plan fails its
    specialist only, and hashing a base does not delay the gateway's start."""
    specs = list(settings.specialists)
    if settings.registry_dir is not None:
        taken = {s.name for s in specs}
        specs += [SpecialistSpec.from_entry(e) for e in Registry(settings.registry_dir).list() if e.name not in taken]
    return specs


class CountResponses:
    """Count every HTTP response by route, method and status (``moe_gateway_http_responses_total``). A plain
    ASGI middleware: Starlette's ``@app.middleware("http")`` wraps each request in extra tasks and streams,
    which cost the gateway more CPU per request than everything else it does."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            metrics = getattr(scope["app"].state, "metrics", None)
            if metrics is not None:
                metrics.http_responses.labels(path, scope["method"], str(status)).inc()


def create_app(settings: Settings | None = None, engine_factory: EngineFactory = vllm_engine) -> FastAPI:
    """The gateway; ``engine_factory`` builds each specialist's engine (vLLM; tests of the HTTP layer pass
    an in-memory one)."""
    settings = settings or load_settings()
    specs = specialist_specs(settings)
    if not specs:
        raise ValueError("no specialists to serve: set MOE_SPECIALISTS, MOE_REGISTRY_DIR or --specialist")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = GatewayMetrics()
        pool = EnginePool(specs, settings, metrics, engine_factory)
        app.state.settings, app.state.metrics, app.state.pool = settings, metrics, pool
        cache = TranslationCache(settings.translation_cache_size, metrics) if settings.translation_cache_size else None
        app.state.translator = Translator(pool, settings, metrics, cache=cache)
        app.state.glossaries = GlossaryStore(settings.state_dir / "glossaries")
        app.state.documents = DocumentJobs()
        starting = asyncio.create_task(pool.start())
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await app.state.documents.close()
            await pool.close()

    app = FastAPI(
        title="moe-specialists gateway",
        summary="Translation by small expert-pruned MoE specialists, routed by language pair",
        version="0.1.0",
        lifespan=lifespan,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["*"], expose_headers=["X-Specialist", "Retry-After"],
        )

    app.add_middleware(CountResponses)

    install_error_handlers(app)
    for module in (translate, detect, languages, specialists, health, libretranslate, deepl, deepl_glossaries,
               deepl_documents, web):
        app.include_router(module.router)
    app.add_middleware(libretranslate.CompatCors, origins=settings.libretranslate_cors_origins)
    return app
