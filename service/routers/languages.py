"""GET /v1/languages: languages and every served direction with the specialist that answers it."""

from __future__ import annotations

from fastapi import APIRouter

from moe_specialists.models.languages import language_name
from moe_specialists.service.deps import TranslatorDep
from moe_specialists.service.routing import Tier, served_pairs
from moe_specialists.service.schemas import Direction, Language, LanguagesResponse
from moe_specialists.service.translation import Translator

router = APIRouter(prefix="/v1", tags=["languages"])

TIER_NAMES = {Tier.EXACT: "exact", Tier.PAIR: "pair", Tier.MULTILINGUAL: "multilingual", Tier.BASE: "base"}


def served_languages(translator: Translator) -> tuple[list[Language], list[Direction]]:
    """Every served language (canonical code, CLDR name, the targets it translates into) and direction."""
    pairs = served_pairs(translator.pool.routes(), translator.base_languages())
    directions = [Direction(source=s, target=t, specialist=c.route.name, route=TIER_NAMES[c.tier])
                  for (s, t), c in pairs.items()]
    targets: dict[str, list[str]] = {}
    for s, t in pairs:
        targets.setdefault(s, []).append(t)
        targets.setdefault(t, [])
    languages = [Language(code=c, name=language_name(c), targets=sorted(targets[c])) for c in sorted(targets)]
    return languages, directions


@router.get("/languages", response_model=LanguagesResponse)
async def languages(translator: TranslatorDep) -> LanguagesResponse:
    langs, directions = served_languages(translator)
    return LanguagesResponse(languages=langs, directions=directions)
