"""The app factory: wiring only. ``create_app(settings)`` builds a FastAPI app whose lifespan starts the
engine pool (in the background: /healthz answers at once, /readyz turns 200 when engines are ready) and
closes it on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moe_specialists.models.plan import Plan
from moe_specialists.models.plan_loading import plan_file_of, view_of_plan
from moe_specialists.models.registry import Registry, weight_stats
from moe_specialists.service.engines import EngineFactory, EnginePool, vllm_engine
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
from moe_specialists.service.settings import Settings, SpecialistSpec, load_settings
from moe_specialists.service.translation import Translator

log = logging.getLogger(__name__)


def specialist_specs(settings: Settings) -> list[SpecialistSpec]:
    """Explicit specialists, then every registry entry whose name is not taken already; plans served from
    their base (``plan_spec``)."""
    specs = list(settings.specialists)
    if settings.registry_dir is not None:
        taken = {s.name for s in specs}
        specs += [SpecialistSpec.from_entry(e) for e in Registry(settings.registry_dir).list() if e.name not in taken]
    return [plan_spec(s, settings.views_dir) for s in specs]


def plan_spec(spec: SpecialistSpec, views_dir: Path) -> SpecialistSpec:
    """A spec whose path is a plan (.json) or a plan view is served from the plan's base: its view is made (or
    found) under ``views_dir`` after the base's files were checked against the plan; weight bytes and experts
    are the sliced copy's. Any other spec as it is."""
    plan_file = None if spec.remote else plan_file_of(Path(spec.path))
    if plan_file is None:
        return spec
    plan = Plan.load(plan_file)
    view = view_of_plan(plan, views_dir if plan_file == Path(spec.path) else Path(spec.path).parent)
    parameters, weight_bytes = weight_stats(view)
    return spec.model_copy(update={
        "path": str(view), "weight_bytes": weight_bytes, "base_weight_bytes": plan.base.weight_bytes,
        "parameters": parameters, "experts_kept": sum(len(k) for k in plan.kept),
        "experts_total": sum(plan.base.experts_per_layer[layer] for layer in plan.layers),
    })


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

    app.add_middleware(CountResponses)

    install_error_handlers(app)
    for module in (translate, detect, languages, specialists, health, libretranslate, deepl, web):
        app.include_router(module.router)
    app.add_middleware(libretranslate.CompatCors, origins=settings.libretranslate_cors_origins)
    return app
