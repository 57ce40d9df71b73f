"""Translation flow shared by /v1/translate, LibreTranslate's and DeepL's: validate limits and languages, detect
the source, route each text, cut it into segments (``service.segments``), admit the request's segments into their
engines' queues, generate them all at once (the engines batch them), extract, rebuild each text, record metrics.
Streaming: ``service.streaming``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator

from moe_specialists.models.languages import UnknownLanguage, canonical, flores200, resolve
from moe_specialists.service.cache import Key, TranslationCache, cacheable
from moe_specialists.service.detect import METHOD, Detector
from moe_specialists.service.documents import chunks
from moe_specialists.service.engines.base import (
    EngineBusy,
    EngineInputError,
    EngineUnavailable,
    Generation,
    GenerationParams,
)
from moe_specialists.service.engines.pool import EnginePool
from moe_specialists.service.extract import extract_translation
from moe_specialists.service.jobs import ROUTE_NAMES, Job, Planned, all_or_nothing, window
from moe_specialists.service.limits import check_limits
from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.routing import NoRoute, Route, candidates, choose, languages, served, sources_for
from moe_specialists.service.schemas import DetectedLanguage, TranslationItem
from moe_specialists.service.segments import SplitMode, flatten_newlines, keep_format, rebuild, segment
from moe_specialists.service.settings import Settings
from moe_specialists.service.terms import Terms, enforce, protect
from moe_specialists.service.translation_errors import (
    InvalidInput,
    Overloaded,
    ShuttingDown,
    TimedOut,
    Unavailable,
    UnservedLanguage,
    UnsupportedPair,
)

# vLLM's finish reasons of a generation that did not end: never an answer (nor is a stream that ends without a
# finished output, as vLLM's ends when its engine shuts down: its last ``STREAM_FINISHED`` is not yielded).
CUT_OFF = ("abort", "error")


class Translator:
    def __init__(self, pool: EnginePool, settings: Settings, metrics: GatewayMetrics,
                 detector: Detector | None = None, cache: TranslationCache | None = None):
        self.pool, self.settings, self.metrics = pool, settings, metrics
        self.detector = detector or Detector()
        self.cache = cache

    # ---- languages ----
    def base_languages(self) -> tuple[str, ...]:
        """What a base model is offered in: ``settings.base_languages``, else the FLORES-200 languages."""
        return tuple(self.settings.base_languages) or flores200()

    def accepted(self, routes: list[Route] | None = None) -> list[str]:
        """Every language the served models declare (canonical codes, sorted)."""
        return languages(self.pool.routes() if routes is None else routes, self.base_languages())

    def language(self, field: str, code: str, accepted: list[str], allow_auto: bool = False) -> str:
        """The canonical code of ``code`` (``auto`` kept) when a served language answers it, else
        ``UnservedLanguage`` listing the accepted codes."""
        if allow_auto and code.strip().lower() == "auto":
            return "auto"
        try:
            found = canonical(code)
            if resolve(found, accepted) is not None:
                return found
            by_model = "; ".join(f"{n}: {', '.join(items)}" for n, items in served(self.pool.routes()).items())
            why = f"{found!r} is not served (served: {by_model})"
        except UnknownLanguage as e:
            why = str(e)
        listed = (["auto"] if allow_auto else []) + accepted
        raise UnservedLanguage(
            "unknown_language", f"unknown {field} language {code[:40]!r}: {why}; accepted: {', '.join(listed)}",
            accepted=listed, served=served(self.pool.routes()),
        )

    def pair(self, source: str, target: str) -> tuple[str, str, bool]:
        """(canonical source or "auto", canonical target, same): ``UnservedLanguage`` for a code no served
        language answers; ``same`` when both resolve to one served language (the text needs no translation)."""
        accepted = self.accepted()
        source = self.language("source", source, accepted, allow_auto=True)
        target = self.language("target", target, accepted)
        same = source != "auto" and resolve(source, accepted) == resolve(target, accepted)
        return source, target, same

    def detect_for(self, texts: list[str], target: str | None) -> list[DetectedLanguage]:
        """Detection for raw codes: ``target`` None (any served language) or a code (its served sources);
        ``UnservedLanguage`` for an unknown target."""
        if target is None:
            return self.detect(texts)
        accepted = self.accepted()
        return self.detect(texts, resolve(self.language("target", target, accepted), accepted))

    async def translate_all(self, texts: list[str], source: str, target: str, split: SplitMode = "sentences",
                            markup: bool = False, preserve_formatting: bool = False,
                            terms: Terms | None = None) -> list[TranslationItem]:
        """Many texts (a document's), sent in consecutive requests within the batch limits."""
        s = self.settings
        out: list[TranslationItem] = []
        for chunk in chunks(texts, s.max_batch_size, s.max_chars_per_batch):
            out += await self.translate(Job(chunk, source, target, split=split, markup=markup,
                                            preserve_formatting=preserve_formatting, terms=terms))
        return out

    def detect(self, texts: list[str], target: str | None = None) -> list[DetectedLanguage]:
        """The language of each text among the served sources of ``target`` (any served language when target
        is None)."""
        routes = self.pool.routes()
        if target is None:
            candidates = self.accepted(routes)
        else:  # a target no route translates into (or a forced specialist): any other served language
            candidates = sources_for(routes, target, self.base_languages()) or [
                c for c in self.accepted(routes) if c != target] or self.accepted(routes)
        return [DetectedLanguage(language=code, confidence=confidence, method=METHOD)
                for code, confidence in self.detector.detect_batch(texts, candidates)]

    # ---- validation and routing (no engine work) ----
    def _no_route(self, e: NoRoute) -> UnsupportedPair:
        return UnsupportedPair("unsupported_direction", str(e), served=e.served)

    def plan(self, job: Job) -> list[Planned]:
        """Check limits and languages (``job.source`` / ``job.target`` become canonical codes: what the prompt
        names), detect sources, route each text by the served languages its codes resolve to and cut it into
        segments. A text of only whitespace is not planned (it is answered as it is)."""
        check_limits(job.texts, job.max_tokens, self.settings)
        routes = self.pool.routes()
        accepted = self.accepted(routes)
        job.source = self.language("source", job.source, accepted, allow_auto=True)
        job.target = self.language("target", job.target, accepted)
        target = resolve(job.target, accepted)
        assert target is not None
        if job.source == job.target or (job.source != "auto" and resolve(job.source, accepted) == target):
            raise InvalidInput("same_language", f"source and target are both {job.target!r}")
        if job.specialist is not None:
            engine = self.pool.get(job.specialist)
            if engine is None:
                raise InvalidInput(
                    "unknown_specialist", f"no specialist {job.specialist!r}; served: {sorted(self.pool.engines)}",
                    accepted=sorted(self.pool.engines),
                )
        live = [i for i, text in enumerate(job.texts) if text.strip()]
        detected: dict[int, DetectedLanguage] = {}
        if job.source == "auto":
            if job.specialist is None and not sources_for(routes, target, self.base_languages()):
                raise self._no_route(NoRoute("auto", job.target, served(routes)))
            if live:
                detected = dict(zip(live, self.detect([job.texts[i] for i in live], target), strict=True))
        planned = []
        for i in live:
            text, d = job.texts[i], detected.get(i)
            source = d.language if d is not None else job.source
            if job.specialist is not None:
                engine = self.pool.engines[job.specialist]
                planned.append(Planned(i, text, source, engine, "forced", d, [(engine, "forced")]))
                continue
            resolved = resolve(source, accepted) or source
            try:
                choice = choose(routes, resolved, target)
            except NoRoute as e:
                raise self._no_route(e) from None
            found = candidates(routes, resolved, target)
            ordered = [c for c in found if c.route.ready] + [c for c in found if not c.route.ready]
            options = [(self.pool.engines[c.route.name], ROUTE_NAMES[c.tier]) for c in ordered]
            engine = self.pool.engines[choice.route.name]
            planned.append(Planned(i, text, source, engine, ROUTE_NAMES[choice.tier], d, options))
        for p in planned:
            p.segments = segment(p.text, p.source, job.split, self.settings.max_segment_chars, job.markup)
            p.prompts = [flatten_newlines(t) if job.split == "nonewlines" else t for t in p.segments.texts]
            if job.terms is not None:
                p.protected = [protect(t, job.terms, job.markup) for t in p.prompts]
                p.prompts = [x.text for x in p.protected]
        return planned

    def params(self, job: Job) -> GenerationParams:
        s = job.sampling
        return GenerationParams(
            max_tokens=job.max_tokens or self.settings.default_max_tokens,
            temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, seed=s.seed,
            repetition_penalty=s.repetition_penalty,
        )

    # ---- admission ----
    def _retry(self, planned: list[Planned]) -> int | None:
        """Seconds to wait for texts none of whose engines can serve them now: the soonest expected recovery
        among their options (1 s when one is ready again); None when none of them will ever serve again."""
        names = sorted({e.name for p in planned for e, _ in p.options} or {p.engine.name for p in planned})
        after = self.pool.retry_after(names)
        return None if after is None else int(after)

    def admit(self, planned: list[Planned], target: str, stack: contextlib.ExitStack) -> None:
        """Reserve queue slots for every text (all or nothing) or raise. The texts of one engine (and source)
        go together to its first option with room: the chosen engine, else the next capable one (overflow),
        else ``Overloaded`` (some option is ready but full) or ``Unavailable`` (none is ready). A group takes
        ``window`` slots, shared by its segments through ``gate``."""
        if self.pool.draining:
            raise ShuttingDown("shutting_down", "the gateway is shutting down; retry on another instance",
                               retry_after_s=self.settings.retry_after_s)
        groups: dict[tuple[str, str], list[Planned]] = {}
        for p in planned:
            groups.setdefault((p.engine.name, p.source), []).append(p)
        for (name, source), group in groups.items():
            n, direction = len(group), f"{source}-{target}"
            pieces = sum(max(len(p.prompts), 1) for p in group)
            options = group[0].options or [(group[0].engine, group[0].route)]
            busy: EngineBusy | None = None
            for engine, _route in options:
                if not engine.ready:
                    continue
                slots = window(n, pieces, engine.limit - engine.inflight, self.settings.max_num_seqs)
                try:
                    stack.enter_context(engine.slot(slots))
                except EngineBusy as e:
                    busy = busy or e
                    continue
                if engine.name != name:
                    self.metrics.overflows.labels(name, engine.name).inc(n)
                gate = asyncio.Semaphore(slots)
                for p in group:
                    p.gate = gate
                    if engine.name != name:
                        p.engine, p.overflow_from, p.route = engine, name, "overflow"
                break
            else:
                if busy is not None:
                    self.metrics.rejections.labels(name, direction, "queue_full").inc()
                    raise Overloaded("queue_full", f"{busy}, and no other specialist serving {direction} has room;"
                                     " retry later", retry_after_s=self.settings.retry_after_s,
                                     specialist=name) from None
                self.metrics.rejections.labels(name, direction, "unavailable").inc()
                engine = self.pool.engines[name]
                why = f": {engine.error}" if engine.error else ""
                message = f"specialist {name!r} is {engine.state.replace('_', ' ')}{why}"
                if len(options) > 1:
                    message += f"; no other specialist serving {direction} is ready either"
                raise Unavailable("engine_unavailable", message, retry_after_s=self._retry(group),
                                  specialist=name) from None
        texts = Counter((p.engine.name, f"{p.source}-{target}") for p in planned)  # (specialist, direction) -> n
        for labels, n in texts.items():
            self.metrics.inflight.labels(*labels).inc(n)
            stack.callback(self.metrics.inflight.labels(*labels).dec, n)

    # ---- generation ----
    async def _generate(
        self, p: Planned, target: str, params: GenerationParams, incremental: bool = True, text: str | None = None
    ) -> AsyncIterator[Generation]:
        """Generate one text (``text``: one of its segments), recording TTFT (when incremental or the engine
        streams anyway), tokens, latency and status for its specialist and direction. With a translation cache,
        an answer found there is the one generation (no engine asked), and a finished one is kept there."""
        text = p.text if text is None else text
        cache, key = self.cache, self._cache_key(p, text, target, params)
        hit = cache.get(key, p.engine.name) if cache is not None and key is not None else None
        if hit is not None:
            yield hit
            return
        labels = (p.engine.name, f"{p.source}-{target}")
        start, status, last, first = time.perf_counter(), "200", None, True
        queued = self.metrics.queued.labels(*labels)
        queued.inc()
        try:
            async for g in p.engine.stream(p.source, target, text, params, incremental):
                if first and g.tokens > 0:
                    queued.dec()
                    # A lone final answer (a non-streamed remote call) says nothing about the first token.
                    if incremental or not g.finished:
                        self.metrics.ttft.labels(*labels).observe(time.perf_counter() - start)
                    first = False
                last = g
                yield g
            if last is None or not last.finished or last.finish_reason in CUT_OFF:
                ended = last is not None and last.finished
                why = f"finish reason {last.finish_reason!r}" if ended else "no finished output"
                raise EngineUnavailable(f"specialist {p.engine.name!r} stopped before the end of this text "
                                        f"({why}: it is closing or restarting)")
        except EngineUnavailable as e:
            status = "503"
            raise Unavailable("engine_unavailable", str(e), retry_after_s=self._retry([p])) from None
        except EngineInputError as e:
            status = "400"
            raise InvalidInput("input_refused", str(e)) from None
        except (TimeoutError, asyncio.CancelledError, GeneratorExit):
            status = "499"  # cut off: the request timed out (see rejections{reason="timeout"}) or the client left
            raise
        else:
            if cache is not None and key is not None and last is not None and last.finished:
                cache.put(key, last)
        finally:
            if first:
                queued.dec()
            self.metrics.requests.labels(*labels, status).inc()
            self.metrics.request_latency.labels(*labels).observe(time.perf_counter() - start)
            if last is not None:
                self.metrics.generated_tokens.labels(*labels).inc(last.tokens)
                self.metrics.prompt_tokens.labels(*labels).inc(last.prompt_tokens)

    def _cache_key(self, p: Planned, text: str, target: str, params: GenerationParams) -> Key | None:
        """What ``text`` is cached under on ``p``'s engine; None without a cache, before the engine's first start
        or when the answer may differ each time (``cache.cacheable``)."""
        if self.cache is None or p.engine.identity is None or not cacheable(params):
            return None
        return (p.engine.identity, p.source, target, text, params)

    async def _segment(self, p: Planned, text: str, target: str, params: GenerationParams) -> Generation:
        """One segment's final generation, within its group's queue slots."""
        assert p.gate is not None, "admitted"
        last = Generation("", 0, 0)
        async with p.gate:
            async for g in self._generate(p, target, params, incremental=False, text=text):
                last = g
        return last

    async def _enforce(self, planned: list[Planned], job: Job, params: GenerationParams,
                       generations: list[Generation]) -> list[str]:
        """Every segment's clean text with the glossary's terms in it (``terms.enforce``); a segment translated
        again replaces its generation in ``generations``."""
        pairs = [(p, x) for p in planned for x in p.protected]
        clean = [extract_translation(g.text, p.engine.end_markers) for (p, _), g in zip(pairs, generations,
                                                                                           strict=True)]

        async def again(indices: list[int]) -> list[str]:
            redo = await all_or_nothing([self._segment(pairs[i][0], pairs[i][1].source, job.target, params)
                                          for i in indices])
            for i, g in zip(indices, redo, strict=True):
                generations[i] = g
            return [extract_translation(generations[i].text, pairs[i][0].engine.end_markers) for i in indices]

        out, hows = await enforce([x for _, x in pairs], clean, again)
        for how, n in hows.items():
            self.metrics.glossary_terms.labels(how).inc(n)
        return out

    def item(self, p: Planned, job: Job, generations: list[Generation], clean: list[str] | None = None
             ) -> TranslationItem:
        """A text's answer: its segments' clean translations (``clean``, else extracted from ``generations``)
        put back into its gaps."""
        assert p.segments is not None and len(generations) == len(p.segments.texts)
        if clean is None:
            clean = [extract_translation(g.text, p.engine.end_markers) for g in generations]
        if job.preserve_formatting:
            clean = [keep_format(s, t) for s, t in zip(p.segments.texts, clean, strict=True)]
        reasons = [g.finish_reason for g in generations]
        return TranslationItem(
            text=rebuild(p.segments, clean),
            source=p.source,
            specialist=p.engine.name,
            route=p.route,  # type: ignore[arg-type]
            overflow_from=p.overflow_from,
            generated_tokens=sum(g.tokens for g in generations),
            finish_reason="length" if "length" in reasons else (reasons[-1] if reasons else None),
            detected_language=p.detected,
            segments=len(generations),
        )

    def blank(self, job: Job, text: str) -> TranslationItem:
        """The answer to a text of only whitespace: itself, no engine asked (source ``und`` when detected)."""
        source = "und" if job.source == "auto" else job.source
        return TranslationItem(text=text, source=source, specialist="", route="none", generated_tokens=0,
                               finish_reason=None, segments=0)

    def _timeout(self, planned: list[Planned], target: str) -> TimedOut:
        for p in planned:
            self.metrics.rejections.labels(p.engine.name, f"{p.source}-{target}", "timeout").inc()
        return TimedOut(
            "timeout", f"no answer within {self.settings.request_timeout_s} s; send less text or retry later",
            limit_seconds=self.settings.request_timeout_s,
        )

    async def translate(self, job: Job) -> list[TranslationItem]:
        """Every text of the job, its segments generated together; a blank text answered as it is."""
        planned = self.plan(job)
        params = self.params(job)
        generations: list[Generation] = []
        clean: list[str] | None = None
        if planned:
            with contextlib.ExitStack() as stack:
                self.admit(planned, job.target, stack)
                work = [self._segment(p, text, job.target, params) for p in planned for text in p.prompts]
                try:
                    async with asyncio.timeout(self.settings.request_timeout_s):
                        generations = await all_or_nothing(work)
                        if job.terms is not None:
                            clean = await self._enforce(planned, job, params, generations)
                except TimeoutError:
                    raise self._timeout(planned, job.target) from None
        answers, at = {}, 0
        for p in planned:
            n = len(p.prompts)
            answers[p.index] = self.item(p, job, generations[at:at + n], None if clean is None else clean[at:at + n])
            at += len(p.prompts)
        return [answers[i] if i in answers else self.blank(job, text) for i, text in enumerate(job.texts)]

