"""/healthz (liveness: some engine can still serve), /readyz (engines are ready; per-specialist states),
/metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from moe_specialists.service.deps import MetricsDep, PoolDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(pool: PoolDep) -> JSONResponse:
    """200 while some engine is ready or can still recover; 503 when every engine has been given up (after
    its restarts failed), so that the orchestrator replaces the process."""
    if pool.alive:
        return JSONResponse({"status": "ok"})
    reasons = {name: e.error for name, e in pool.engines.items()}
    return JSONResponse({"status": "dead", "error": "every engine has been given up", "specialists": reasons},
                        status_code=503)


@router.get("/readyz")
async def readyz(pool: PoolDep, settings: SettingsDep) -> JSONResponse:
    """200 when any engine (``readiness=all``: every engine) is ready, else 503 with Retry-After (the soonest
    expected recovery). While the gateway drains (SIGTERM) always 503."""
    engines = pool.engines
    ready = [name for name, e in engines.items() if e.ready]
    ok = bool(ready) and (settings.readiness == "any" or len(ready) == len(engines)) and not pool.draining
    if pool.draining:
        status = "draining"
    else:
        status = "ready" if len(ready) == len(engines) and ready else ("degraded" if ok else "not ready")
    body = {
        "status": status,
        "specialists": {
            name: {k: v for k, v in e.status().items() if k != "name"} for name, e in engines.items()
        },
    }
    headers = {}
    if not ok and not pool.draining and (after := pool.retry_after(list(engines))) is not None:
        headers["Retry-After"] = after
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)


@router.get("/metrics")
async def metrics(metrics: MetricsDep, pool: PoolDep) -> Response:
    pool.refresh_metrics()
    return Response(metrics.render(), media_type=metrics.content_type)
