"""Routing policy (pure): which model answers a source->target request.

Tiers, best first: the specialist for the exact direction > a specialist serving the pair (the reverse
direction) > a multilingual specialist covering both languages > the base model. Within a tier a ready
engine wins, then the narrowest specialist (fewest directions / languages), then the name. When no model
serves the pair, ``NoRoute`` lists what is served.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

from moe_specialists.models.languages import split_direction


class Tier(IntEnum):
    EXACT = 0
    PAIR = 1
    MULTILINGUAL = 2
    BASE = 3


@dataclass(frozen=True)
class Route:
    """What one served model covers."""

    name: str
    directions: frozenset[tuple[str, str]] = frozenset()
    languages: frozenset[str] = frozenset()
    base: bool = False
    ready: bool = True

    def tier(self, source: str, target: str) -> Tier | None:
        if (source, target) in self.directions:
            return Tier.EXACT
        if (target, source) in self.directions:
            return Tier.PAIR
        if source in self.languages and target in self.languages:
            return Tier.MULTILINGUAL
        if self.base:
            return Tier.BASE
        return None

    def served(self) -> list[str]:
        """Human-readable coverage: 'en-de', 'multilingual(en,de,fr)', 'base(any pair)'."""
        out = [f"{s}-{t}" for s, t in sorted(self.directions)]
        if self.languages:
            out.append(f"multilingual({','.join(sorted(self.languages))})")
        if self.base:
            out.append("base(any pair)")
        return out

    def width(self) -> int:
        return len(self.directions) + len(self.languages) ** 2 + (10**6 if self.base else 0)


@dataclass(frozen=True)
class Choice:
    route: Route
    tier: Tier


@dataclass
class NoRoute(Exception):
    source: str
    target: str
    served: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        listed = "; ".join(f"{name}: {', '.join(items)}" for name, items in self.served.items()) or "nothing"
        return f"no model serves {self.source}->{self.target}; served: {listed}"


def make_route(
    name: str,
    directions: Iterable[str] = (),
    languages: Iterable[str] = (),
    base: bool = False,
    ready: bool = True,
) -> Route:
    pairs = frozenset(split_direction(d) for d in directions)
    return Route(name, pairs, frozenset(languages), base, ready)  # type: ignore[arg-type]


def candidates(routes: Iterable[Route], source: str, target: str) -> list[Choice]:
    """Every route that can serve source->target, best first (tier, ready, narrowest, name)."""
    found = [Choice(r, t) for r in routes if (t := r.tier(source, target)) is not None]
    return sorted(found, key=lambda c: (c.tier, not c.route.ready, c.route.width(), c.route.name))


def choose(routes: Iterable[Route], source: str, target: str) -> Choice:
    """The best route for source->target (it may be not ready: the caller answers 503 then)."""
    routes = list(routes)
    found = candidates(routes, source, target)
    if source == target or not found:
        raise NoRoute(source, target, served(routes))
    ready = [c for c in found if c.route.ready]
    return ready[0] if ready else found[0]


def served(routes: Iterable[Route]) -> dict[str, list[str]]:
    return {r.name: r.served() for r in routes}


def languages(routes: Iterable[Route], base_languages: Iterable[str] = ()) -> list[str]:
    """Every language some route serves (a base route: ``base_languages``), sorted."""
    routes = list(routes)
    out = {x for r in routes for pair in r.directions for x in pair} | {x for r in routes for x in r.languages}
    if any(r.base for r in routes):
        out |= set(base_languages)
    return sorted(out)


def sources_for(routes: Iterable[Route], target: str, base_languages: Iterable[str] = ()) -> list[str]:
    """The source languages some route translates into ``target`` (what detection chooses among)."""
    routes = list(routes)
    return [s for s in languages(routes, base_languages) if s != target and candidates(routes, s, target)]


def served_pairs(routes: Iterable[Route], base_languages: Iterable[str] = ()) -> dict[tuple[str, str], Choice]:
    """Every (source, target) among the served languages that some route serves, with its best choice."""
    routes = list(routes)
    langs = languages(routes, base_languages)
    out: dict[tuple[str, str], Choice] = {}
    for s in langs:
        for t in langs:
            if s != t and (found := candidates(routes, s, t)):
                out[(s, t)] = found[0]
    return out
