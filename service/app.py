"""The app factory: wiring only. ``create_app(settings)`` builds a FastAPI app whose lifespan starts the
engine pool (in the background: /healthz answers at once, /readyz turns 200 when engines are ready) and
closes it on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware

from moe_specialists.models.registry import Registry
from moe_specialists.service.engines import EnginePool
from moe_specialists.service.errors import install_error_handlers
from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.routers import (
    deepl,
    detect,
    health,
    languages,
    libretranslate,
    specialists,
    translate,
    web,
)
from moe_specialists.service.settings import Settings, SpecialistSpec
from moe_specialists.service.translation import Translator

log = logging.getLogger(__name__)


def specialist_specs(settings: Settings) -> list[SpecialistSpec]:
    """Explicit specialists, then every registry entry whose name is not taken already."""
    specs = list(settings.specialists)
    if settings.registry_dir is not None:
        taken = {s.name for s in specs}
        specs += [SpecialistSpec.from_entry(e) for e in Registry(settings.registry_dir).list() if e.name not in taken]
    return specs


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    specs = specialist_specs(settings)
    if not specs:
        raise ValueError("no specialists to serve: set MOE_SPECIALISTS, MOE_REGISTRY_DIR or --specialist")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = GatewayMetrics()
        pool = EnginePool(specs, settings, metrics)
        app.state.settings, app.state.metrics, app.state.pool = settings, metrics, pool
        app.state.translator = Translator(pool, settings, metrics)
        starting = asyncio.create_task(pool.start())
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
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

    @app.middleware("http")
    async def count_responses(request: Request, call_next) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        request.app.state.metrics.http_responses.labels(path, request.method, str(response.status_code)).inc()
        return response

    install_error_handlers(app)
    for module in (translate, detect, languages, specialists, health, libretranslate, deepl, web):
        app.include_router(module.router)
    app.add_middleware(libretranslate.CompatCors, origins=settings.libretranslate_cors_origins)
    return app
