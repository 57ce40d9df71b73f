"""/healthz (the process answers), /readyz (engines are ready; per-specialist states), /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from moe_specialists.service.deps import MetricsDep, PoolDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(pool: PoolDep, settings: SettingsDep) -> JSONResponse:
    """200 when any engine (``readiness=all``: every engine) is ready, else 503 with Retry-After."""
    states = {name: e.state for name, e in pool.engines.items()}
    ready = [name for name, state in states.items() if state == "ready"]
    ok = bool(ready) and (settings.readiness == "any" or len(ready) == len(states))
    status = "ready" if len(ready) == len(states) and ready else ("degraded" if ok else "not ready")
    body = {
        "status": status,
        "specialists": {name: {"state": e.state, "error": e.error} for name, e in pool.engines.items()},
    }
    headers = {} if ok else {"Retry-After": str(settings.retry_after_s)}
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)


@router.get("/metrics")
async def metrics(metrics: MetricsDep, pool: PoolDep) -> Response:
    pool.refresh_metrics()
    return Response(metrics.render(), media_type=metrics.content_type)
