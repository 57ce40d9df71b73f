"""GET /v1/languages: languages and every served direction with the specialist that answers it."""

from __future__ import annotations

from fastapi import APIRouter

from moe_specialists.models.prompts import LANGUAGE_NAMES
from moe_specialists.service.deps import PoolDep
from moe_specialists.service.routing import Tier, served_pairs
from moe_specialists.service.schemas import Direction, Language, LanguagesResponse

router = APIRouter(prefix="/v1", tags=["languages"])

TIER_NAMES = {Tier.EXACT: "exact", Tier.PAIR: "pair", Tier.MULTILINGUAL: "multilingual", Tier.BASE: "base"}


def served_languages(pool) -> tuple[list[Language], list[Direction]]:
    pairs = served_pairs(pool.routes())
    directions = [Direction(source=s, target=t, specialist=c.route.name, route=TIER_NAMES[c.tier])
                  for (s, t), c in pairs.items()]
    codes = sorted({s for s, _ in pairs} | {t for _, t in pairs})
    languages = [
        Language(code=c, name=LANGUAGE_NAMES[c], targets=sorted(t for s, t in pairs if s == c)) for c in codes
    ]
    return languages, directions


@router.get("/languages", response_model=LanguagesResponse)
async def languages(pool: PoolDep) -> LanguagesResponse:
    langs, directions = served_languages(pool)
    return LanguagesResponse(languages=langs, directions=directions)
