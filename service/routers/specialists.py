"""GET /v1/specialists: every served model, its backend state and what it serves."""

from __future__ import annotations

from fastapi import APIRouter

from moe_specialists.service.deps import PoolDep
from moe_specialists.service.schemas import SpecialistInfo

router = APIRouter(prefix="/v1", tags=["specialists"])


@router.get("/specialists", response_model=list[SpecialistInfo])
async def specialists(pool: PoolDep) -> list[SpecialistInfo]:
    out = []
    for engine in pool.engines.values():
        s = engine.spec
        sizes = engine.sizes_known  # a plan's sizes are known once its check passed (null until then)
        out.append(SpecialistInfo(
            **engine.status(), path=s.path, directions=s.directions, languages=s.languages, base=s.base,
            weight_bytes=s.weight_bytes if sizes else None, base_weight_bytes=s.base_weight_bytes if sizes else None,
            bytes_saved=max(s.base_weight_bytes - s.weight_bytes, 0) if sizes else None,
        ))
    return out
