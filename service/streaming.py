"""``stream: true`` on /v1/translate: one text as server-sent events, segment by segment in order.

Events: ``meta`` (specialist, route, source, target, segments), then ``data: {"delta": ..., "segment": k}``
pieces of clean text, then ``done`` (``translation``, ``generated_tokens``, ``finish_reason``, ``segments``) or
``error`` (``error``, ``code``). Concatenated, the deltas are the rebuilt text: the gap before segment k comes
with its first delta, the text's trailing whitespace with the last one. Every segment is generated at once (in
the queue slots the text was admitted with); segment k's deltas are sent live while it is the first unfinished
one, and at once, in order, when it finished earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from moe_specialists.service.engines.base import Generation, GenerationParams
from moe_specialists.service.extract import extract_translation
from moe_specialists.service.jobs import Job, Planned
from moe_specialists.service.translation import Translator
from moe_specialists.service.translation_errors import InvalidInput, TranslationError

Piece = str | Generation | BaseException  # a delta, the segment's final generation, or why it failed


def sse(data: dict, event: str | None = None) -> str:
    """One server-sent event."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _feed(translator: Translator, p: Planned, text: str, target: str, params: GenerationParams,
                out: asyncio.Queue[Piece]) -> None:
    """Generate one segment into ``out``: its clean deltas, then its final generation (or the error)."""
    assert p.gate is not None, "admitted"
    sent = ""
    try:
        async with p.gate:
            last = Generation("", 0, 0)
            async for g in translator._generate(p, target, params, text=text):
                last = g
                clean = extract_translation(g.text, p.engine.end_markers, final=False)
                if clean.startswith(sent) and len(clean) > len(sent):
                    out.put_nowait(clean[len(sent):])
                    sent = clean
        out.put_nowait(last)
    except (Exception, asyncio.CancelledError) as e:
        out.put_nowait(e)
        raise


async def stream(translator: Translator, job: Job) -> tuple[str, AsyncIterator[str], contextlib.ExitStack]:
    """(specialist, events, stack): route and admit one text now (refusals are raised before the stream starts).
    The stack holds the queue slots: the iterator closes it, and so must the response when the iterator never
    runs (closing twice is harmless). A text of only whitespace streams ``meta`` and ``done`` (no engine)."""
    if len(job.texts) != 1:
        raise InvalidInput("stream_batch", "streaming takes one text; send a batch without stream")
    planned = translator.plan(job)
    params = translator.params(job)
    stack = contextlib.ExitStack()
    if not planned:
        return "", _blank(translator, job, stack), stack
    (p,) = planned
    translator.admit([p], job.target, stack)
    return p.engine.name, _events(translator, job, p, params, stack), stack


async def _blank(translator: Translator, job: Job, stack: contextlib.ExitStack) -> AsyncIterator[str]:
    with stack:
        item = translator.blank(job, job.texts[0])
        yield sse({"specialist": "", "route": "none", "source": item.source, "target": job.target, "segments": 0},
                  "meta")
        yield sse({"translation": item.text, "generated_tokens": 0, "finish_reason": None, "segments": 0}, "done")


async def _events(translator: Translator, job: Job, p: Planned, params: GenerationParams,
                  stack: contextlib.ExitStack) -> AsyncIterator[str]:
    assert p.segments is not None
    with stack:
        n = len(p.prompts)
        meta = {"specialist": p.engine.name, "route": p.route, "source": p.source, "target": job.target,
                "segments": n}
        if p.overflow_from is not None:
            meta["overflow_from"] = p.overflow_from
        if p.detected is not None:
            meta["detected_language"] = p.detected.model_dump()
        yield sse(meta, "meta")
        queues: list[asyncio.Queue[Piece]] = [asyncio.Queue() for _ in range(n)]
        tasks = [asyncio.ensure_future(_feed(translator, p, text, job.target, params, q))
                 for text, q in zip(p.prompts, queues, strict=True)]
        finals: list[Generation] = []
        try:
            async with asyncio.timeout(translator.settings.request_timeout_s):
                for k, q in enumerate(queues):
                    gap = p.segments.gaps[k]
                    while True:
                        piece = await q.get()
                        if isinstance(piece, BaseException):
                            raise piece
                        if isinstance(piece, Generation):
                            finals.append(piece)
                            break
                        yield sse({"delta": gap + piece, "segment": k})
                        gap = ""
                    if gap:  # the segment said nothing: its gap still goes
                        yield sse({"delta": gap, "segment": k})
        except TimeoutError:
            yield sse({"error": translator._timeout([p], job.target).message, "code": "timeout"}, "error")
            return
        except TranslationError as e:
            yield sse({"error": e.message, "code": e.code}, "error")
            return
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if p.segments.gaps[-1]:
            yield sse({"delta": p.segments.gaps[-1], "segment": n - 1})
        item = translator.item(p, job, finals)
        yield sse({"translation": item.text, "generated_tokens": item.generated_tokens,
                   "finish_reason": item.finish_reason, "segments": n}, "done")
