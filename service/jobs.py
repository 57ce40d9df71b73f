"""What a translation request is once parsed (``Job``), each of its texts once routed (``Planned``), and the
queue-slot arithmetic of admitting them (``window``) and how their generations run (``all_or_nothing``). The
flow that fills and runs them: ``service.translation``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from moe_specialists.service.engines.base import Engine
from moe_specialists.service.routing import Tier
from moe_specialists.service.schemas import DetectedLanguage, Sampling
from moe_specialists.service.segments import Segmented, SplitMode
from moe_specialists.service.terms import Protected, Terms


@dataclass
class Job:
    texts: list[str]
    source: str
    target: str
    max_tokens: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    specialist: str | None = None
    split: SplitMode = "sentences"  # DeepL's split_sentences: "1" sentences, "nonewlines", "0" none
    markup: bool = False  # the texts are runs of HTML/XML (cut only outside tags)
    preserve_formatting: bool = False  # DeepL's: first letter's case and final punctuation as the source's
    terms: Terms | None = None  # a glossary's dictionary for the pair, enforced per segment (service.terms)


ROUTE_NAMES = {Tier.EXACT: "exact", Tier.PAIR: "pair", Tier.MULTILINGUAL: "multilingual", Tier.BASE: "base"}


@dataclass
class Planned:
    """One text with its source language, engine and route. ``options``: every engine that can serve it with
    its route, best first (ready ones first): admission moves a text down this list when its engine's queue
    is full (route "overflow", ``overflow_from`` the full one). ``segments``: the text cut for translation;
    ``prompts``: what the engine reads of each segment (``protected``: with glossary terms as placeholders);
    ``gate``: the queue slots its segments share."""

    index: int
    text: str
    source: str
    engine: Engine
    route: str
    detected: DetectedLanguage | None = None
    options: list[tuple[Engine, str]] = field(default_factory=list)
    overflow_from: str | None = None
    segments: Segmented | None = None
    prompts: list[str] = field(default_factory=list)
    protected: list[Protected] = field(default_factory=list)
    gate: asyncio.Semaphore | None = None



def window(texts: int, segments: int, free: int, most: int) -> int:
    """Queue slots a group of ``texts`` texts cut into ``segments`` segments takes on one engine: one per text
    at least (all or nothing, as a batch of texts), else as many segments as are free, at most ``most`` (the
    sequences an engine runs at once; more would only wait in its queue)."""
    return max(texts, min(segments, free, most))


async def all_or_nothing(coros: list) -> list:
    """Run concurrently; when one fails, cancel the others (their engine requests are aborted) and raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

