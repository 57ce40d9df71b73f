"""Engines: one interface, two implementations.

* ``LocalVllmEngine``: an in-process vLLM ``AsyncLLM`` per specialist (its GPU memory share from settings).
* ``RemoteVllmEngine``: a vLLM OpenAI-compatible server (``vllm serve``) reached over HTTP; the scale-out path.

Both render the prompt with ``models.prompts.render`` (the calibration template) and stream cumulative raw
text decoded with special tokens, which ``service.extract`` cleans. Each engine admits at most
``max_queue_per_engine`` texts at a time (``slot``); beyond that ``EngineBusy`` (429).

Supervision (``EnginePool``): every engine has one lifecycle, in-process or remote:
``starting -> ready -> failed -> starting -> ...`` and, for an in-process engine that fails
``engine_max_restarts`` restarts in a row or whose configuration cannot work (``EngineConfigError``),
``given_up``; ``stopped`` after close. A failed engine is
restarted (a remote one reconnected) after ``backoff_delay`` seconds; a remote one is never given up (the
gateway cannot restart a server it does not run).

A specialist given as a plan (``service.plans``) has its plan checked at every start, in a worker thread
(hashing a large base must not stop the gateway answering): an unusable plan fails that start like a corrupt
folder does (restarts with backoff, then given up), and a restart checks again, so a base the user repaired
is served. Its weight bytes, parameters and experts are known once a start's check passed: until then and
after a check that failed they are absent from /metrics and null in /v1/specialists (never a 0 that would read
as "nothing saved").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from moe_specialists.models.generation import check_vllm_can_serve
from moe_specialists.models.prompts import render, translation_messages
from moe_specialists.models.vllm_worker import PROBE
from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.plans import PlanUnusable, plan_file, plan_spec
from moe_specialists.service.routing import Route, make_route
from moe_specialists.service.settings import Settings, SpecialistSpec

log = logging.getLogger(__name__)


class EngineError(Exception):
    """Base of the errors an engine reports to the gateway."""


class EngineUnavailable(EngineError):
    """Not started, failed or unreachable (503 with Retry-After)."""


class EngineBusy(EngineError):
    """Its queue is full (429 with Retry-After)."""


class EngineInputError(EngineError):
    """The engine refused the input, e.g. longer than its context (400)."""


class EngineConfigError(EngineError):
    """A configuration the engine cannot run with (vLLM refused its arguments, no kernel for its weights on this
    machine): no restart can heal it, so the specialist is given up at once, with the reason."""


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class Generation:
    """Cumulative output so far: raw text (special tokens kept), tokens generated, prompt tokens."""

    text: str
    tokens: int
    prompt_tokens: int
    finished: bool = False
    finish_reason: str | None = None


STATES = ("starting", "ready", "failed", "given_up", "stopped")


def backoff_delay(failures: int, initial: float, maximum: float) -> float:
    """Seconds to wait before the restart that follows ``failures`` failures in a row (0 for the first
    failure): ``initial * 2**failures``, at most ``maximum``."""
    if failures < 0:
        raise ValueError(f"failures must be >= 0, got {failures}")
    return min(initial * 2.0 ** min(failures, 64), maximum)


def expected_wait(
    state: str, now: float, retry_at: float | None, start_began: float | None, start_estimate: float | None,
    fallback: float,
) -> float | None:
    """Seconds until an engine in ``state`` is expected to serve again: 0 when ready; for a failed one the
    wait for its restart (``retry_at``) plus the time a start takes (``start_estimate``, the last start's
    duration; ``fallback`` before any); for a starting one what is left of that; None when it never will."""
    estimate = fallback if start_estimate is None else start_estimate
    if state == "ready":
        return 0.0
    if state == "starting":
        elapsed = 0.0 if start_began is None else now - start_began
        return max(estimate - elapsed, 0.0)
    if state == "failed":
        return max((retry_at or now) - now, 0.0) + estimate
    return None


def retry_after_header(wait: float) -> str:
    """Retry-After in whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))


def failure_reason(error: str | None) -> str:
    """A short label value for a failure: its first line, at most 120 characters."""
    line = (error or "unknown").splitlines()[0] if (error or "").strip() else "unknown"
    return line[:120]


class Engine(ABC):
    backend: str = "?"
    restartable_forever = False  # remote engines: reconnected for ever, never given up

    def __init__(self, spec: SpecialistSpec, settings: Settings, metrics: GatewayMetrics):
        self.configured = spec  # as given (a plan's path for a plan)
        # what the engine serves: a folder as given; for a plan, its checked view (``EnginePool._check_plan``),
        # None until the check of the latest start passed
        self.served: SpecialistSpec | None = None if plan_file(spec) else spec
        self.settings = settings
        self.metrics = metrics
        self._state = "starting"
        self._state_since = self._accounted_at = time.monotonic()
        self.error: str | None = None
        self.inflight = 0
        self.limit = settings.max_queue_per_engine
        self.tokenizer: Any = None
        self.max_model_len: int | None = None
        self.restarts = 0  # restarts (reconnects) attempted
        self.incurable = False  # the last start failed with an EngineConfigError: given up, not restarted
        self.retry_at: float | None = None  # monotonic time of the next restart when failed
        self.start_began: float | None = None
        self.start_estimate: float | None = None  # seconds the last successful start took
        self.died = asyncio.Event()  # set by fail(): wakes the supervisor
        metrics.engine_state_changed(self.name, None, self._state)

    @property
    def spec(self) -> SpecialistSpec:
        """The served specialist when known, else the configured one (same name, directions, languages)."""
        return self.served or self.configured

    @property
    def name(self) -> str:
        return self.configured.name

    @property
    def state(self) -> str:
        """starting | ready | failed | given_up | stopped."""
        return self._state

    @state.setter
    def state(self, new: str) -> None:
        if new not in STATES:
            raise ValueError(f"unknown engine state {new!r}; states: {', '.join(STATES)}")
        if new != self._state:
            self.account_time()
            self.metrics.engine_state_changed(self.name, self._state, new)
            self._state, self._state_since = new, time.monotonic()

    def account_time(self) -> None:
        """Add the time since the last call to the current state's ``moe_engine_state_seconds_total``."""
        now = time.monotonic()
        self.metrics.engine_state_seconds.labels(self.name, self._state).inc(max(now - self._accounted_at, 0.0))
        self._accounted_at = now

    @property
    def ready(self) -> bool:
        return self._state == "ready"

    @property
    def sizes_known(self) -> bool:
        """Whether ``spec``'s weight bytes, parameters and experts are the served specialist's: always for a
        folder, for a plan once its check passed."""
        return self.served is not None

    @property
    def recoverable(self) -> bool:
        """False once given up or stopped: it will never serve again."""
        return self._state not in ("given_up", "stopped")

    def fail(self, reason: str) -> None:
        """The engine stopped working (died, unreachable, failed to start): failed, reason recorded, the
        supervisor woken to restart it."""
        if self._state in ("given_up", "stopped"):
            return
        self.error = reason
        self.state = "failed"
        self.metrics.engine_failed(self.name, failure_reason(reason))
        self.died.set()

    def expected_wait(self) -> float | None:
        return expected_wait(self._state, time.monotonic(), self.retry_at, self.start_began, self.start_estimate,
                             float(self.settings.retry_after_s))

    def route(self) -> Route:
        return make_route(self.name, self.spec.directions, self.spec.languages, self.spec.base, self.ready)

    def status(self) -> dict[str, Any]:
        wait = self.expected_wait()
        return {
            "name": self.name,
            "backend": self.backend,
            "state": self.state,
            "error": self.error,
            "inflight": self.inflight,
            "queue_limit": self.limit,
            "restarts": self.restarts,
            "state_seconds": round(time.monotonic() - self._state_since, 3),
            "expected_ready_in_s": None if wait is None else round(wait, 3),
        }

    async def reset(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what a failed engine still holds before it is started again (default: nothing)."""

    @property
    def end_markers(self) -> tuple[str, ...]:
        eos = getattr(self.tokenizer, "eos_token", None)
        return (eos,) if isinstance(eos, str) and eos else ()

    def has_room(self, n: int = 1) -> bool:
        return self.ready and self.inflight + n <= self.limit

    @contextlib.contextmanager
    def slot(self, n: int = 1) -> Iterator[None]:
        """Admit ``n`` texts or raise ``EngineBusy``; ``EngineUnavailable`` when not ready."""
        if not self.ready:
            why = f": {self.error}" if self.error else ""
            raise EngineUnavailable(f"specialist {self.name!r} is {self.state.replace('_', ' ')}{why}")
        if self.inflight + n > self.limit:
            raise EngineBusy(f"specialist {self.name!r} has {self.inflight} of {self.limit} texts in its queue")
        self.inflight += n
        try:
            yield
        finally:
            self.inflight -= n

    def clamp_max_tokens(self, prompt_tokens: int, max_tokens: int) -> int:
        if self.max_model_len is None:
            return max_tokens
        room = self.max_model_len - prompt_tokens
        if room < 1:
            raise EngineInputError(
                f"the prompt is {prompt_tokens} tokens; specialist {self.name!r} accepts at most "
                f"{self.max_model_len - 1} (its context is {self.max_model_len} tokens): send a shorter text"
            )
        return min(max_tokens, room)

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def check_health(self) -> None:
        """Check the engine; ``fail`` it when it stopped working (never raises)."""

    @abstractmethod
    def stream(
        self, source: str, target: str, text: str, params: GenerationParams, incremental: bool = True
    ) -> AsyncIterator[Generation]:
        """Generate the translation of ``text``; yields cumulative ``Generation``s, the last one finished.
        ``incremental=False``: the caller needs only the end, an engine may yield it alone (cheaper)."""


def _load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def scheduler_logger(metrics: GatewayMetrics, name: str) -> Any:
    """A vLLM stat-logger class that copies the scheduler's state (running, waiting, KV-cache usage) of the
    engine of specialist ``name`` into the gateway's metrics on every engine step.

    It subclasses vLLM's ``PrometheusStatLogger`` without calling its constructor, so that vLLM adds no
    Prometheus logger of its own: that one unregisters and re-registers every ``vllm:*`` metric in the
    process-global registry, which races (``DuplicateTimeseries``) when two in-process engines start at once,
    and it records histograms on every step that the gateway never exports (its metrics are per-app)."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    class SchedulerToMetrics(PrometheusStatLogger):
        def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None):
            self.engine_indexes = engine_indexes or [0]

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx=0):
            if scheduler_stats is not None:
                s = scheduler_stats
                metrics.engine_scheduler(name, s.num_running_reqs, s.num_waiting_reqs, s.kv_cache_usage)

        def record_admission_rejection(self, reason: str) -> None:
            pass

        def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
            pass

        def log(self) -> None:
            pass

        def log_engine_initialized(self) -> None:
            pass

    return SchedulerToMetrics


class LocalVllmEngine(Engine):
    backend = "vllm-inprocess"

    def __init__(self, spec: SpecialistSpec, settings: Settings, metrics: GatewayMetrics, memory_share: float):
        super().__init__(spec, settings, metrics)
        self.memory_share = memory_share
        self.llm: Any = None

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        try:
            check_vllm_can_serve(self.spec.path)
        except ValueError as e:
            raise EngineConfigError(str(e)) from None
        args = AsyncEngineArgs(
            model=self.spec.path,
            tokenizer=self.spec.tokenizer or self.spec.path,
            served_model_name=[self.spec.name],
            dtype=self.settings.dtype,
            max_num_seqs=self.settings.max_num_seqs,
            gpu_memory_utilization=self.memory_share,
            enforce_eager=self.settings.enforce_eager,
            disable_log_stats=True,  # vLLM's own loggers off; ours (scheduler_logger) replaces them
            worker_extension_cls=PROBE,
        )
        try:
            config = await asyncio.to_thread(engine_config, args, self.settings.max_model_len)
        except (ValueError, TypeError) as e:  # vLLM's argument checks (pydantic's ValidationError is a ValueError)
            raise EngineConfigError(f"vLLM refused the configuration: {e}") from None
        self.tokenizer = await asyncio.to_thread(_load_tokenizer, self.spec.tokenizer or self.spec.path)
        # The constructor blocks until the engine core is up (tens of seconds): keep the event loop free.
        self.llm = await asyncio.to_thread(
            AsyncLLM.from_vllm_config, config, stat_loggers=[scheduler_logger(self.metrics, self.name)],
            disable_log_stats=True,
        )
        self.max_model_len = int(self.llm.model_config.max_model_len)
        for kind, nbytes in (await self.llm.collective_rpc("engine_memory"))[0].items():
            self.metrics.engine_memory.labels(self.name, kind).set(nbytes)
        self.error = None
        self.state = "ready"

    async def reset(self) -> None:
        if self.llm is not None:
            llm, self.llm = self.llm, None
            await asyncio.to_thread(llm.shutdown)

    async def close(self) -> None:
        self.state = "stopped"
        await self.reset()

    def engine_core_pids(self) -> list[int]:
        """Process ids of the vLLM engine-core process(es) of this engine (none when not started)."""
        manager = getattr(getattr(getattr(self.llm, "engine_core", None), "resources", None), "engine_manager", None)
        return [p.pid for p in getattr(manager, "processes", []) if p.pid is not None]

    def unfinished_requests(self) -> int:
        """Requests the engine still holds (generating or queued), as its front end counts them."""
        return 0 if self.llm is None else int(self.llm.output_processor.get_num_unfinished_requests())

    async def check_health(self) -> None:
        if self.llm is None or self.state == "stopped":
            return
        if self.llm.errored:
            if self.state == "ready":
                self.fail("the vLLM engine core died")
        elif self.state == "failed" and not self.died.is_set():
            self.error = None  # marked failed by hand (not by fail()): the engine lives, so it is ready
            self.state = "ready"
        if self.unfinished_requests() == 0:  # idle: the scheduler sends no more stats, so zero them here
            self.metrics.engine_scheduler(self.name, 0, 0, 0.0)

    async def stream(
        self, source: str, target: str, text: str, params: GenerationParams, incremental: bool = True
    ) -> AsyncIterator[Generation]:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.llm is None:
            raise EngineUnavailable(f"specialist {self.name!r} is {self.state}")
        prompt = render(self.tokenizer, source, target, text)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        sampling = SamplingParams(
            max_tokens=self.clamp_max_tokens(len(ids), params.max_tokens),
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            seed=params.seed,
            repetition_penalty=params.repetition_penalty,
            skip_special_tokens=False,
            spaces_between_special_tokens=False,
        )
        try:
            async for out in self.llm.generate({"prompt_token_ids": ids}, sampling, uuid.uuid4().hex):
                c = out.outputs[0]
                yield Generation(c.text, len(c.token_ids), len(ids), out.finished, c.finish_reason)
        except EngineDeadError as e:
            self.fail("the vLLM engine core died")
            raise EngineUnavailable(f"specialist {self.name!r}: the vLLM engine core died") from e
        except (VLLMClientError, ValueError) as e:
            raise EngineInputError(f"specialist {self.name!r} refused the input: {e}") from e
        except Exception as e:  # EngineGenerateError and the like: the request failed, the engine lives on
            raise EngineUnavailable(f"specialist {self.name!r}: generation failed: {type(e).__name__}: {e}") from e


def engine_config(args: Any, cap: int | None) -> Any:
    """vLLM's config of ``args`` with the context ``min(cap, the model's own)`` (the model's own when ``cap`` is
    None): the setting caps the context, it never asks for more than the model supports."""
    from vllm.usage.usage_lib import UsageContext

    if cap is not None:
        args.max_model_len = min(cap, args.create_model_config().max_model_len)
    return args.create_engine_config(UsageContext.ENGINE_CONTEXT)


def prompt_may_not_fit(prompt: str, max_tokens: int, max_model_len: int | None) -> bool:
    """Whether ``prompt`` plus ``max_tokens`` might not fit the context, so that the prompt must be tokenized
    to clamp max_tokens. A token covers at least one UTF-8 byte (byte-level BPE, SentencePiece with byte
    fallback), give or take a few added markers, so a prompt of B bytes has at most B + 8 tokens; when that
    fits, the remote server's usage gives the exact count and the gateway skips tokenizing (the hot path)."""
    return max_model_len is not None and len(prompt.encode()) + 8 + max_tokens > max_model_len


SCHEDULER_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


def scheduler_gauges(exposition: str, model: str | None) -> tuple[int, int, float]:
    """(running, waiting, KV-cache usage) of ``model`` from a vLLM server's Prometheus text: requests summed
    over its engines, the KV-cache usage of the fullest one. Only the samples of ``SCHEDULER_METRICS`` go
    through prometheus_client's parser: the other thousand lines of vLLM's exposition (histograms) took
    8 ms of the gateway's CPU to parse at every health check."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = "\n".join(line for line in exposition.splitlines() if line.startswith(SCHEDULER_METRICS))
    running = waiting = usage = 0.0
    for family in text_string_to_metric_families(wanted):
        for sample in family.samples:
            if sample.labels.get("model_name", model) != model:
                continue
            if sample.name == "vllm:num_requests_running":
                running += sample.value
            elif sample.name == "vllm:num_requests_waiting":
                waiting += sample.value
            elif sample.name == "vllm:kv_cache_usage_perc":
                usage = max(usage, sample.value)
    return int(running), int(waiting), usage


class RemoteVllmEngine(Engine):
    """A vLLM OpenAI-compatible server. Prompts are rendered here when the tokenizer loads (from
    ``spec.tokenizer`` or the server's model root) and sent to /v1/completions; otherwise the server's chat
    template renders the same messages through /v1/chat/completions."""

    backend = "vllm-remote"
    restartable_forever = True

    def __init__(self, spec: SpecialistSpec, settings: Settings, metrics: GatewayMetrics):
        super().__init__(spec, settings, metrics)
        self.client = httpx.AsyncClient(
            base_url=spec.path.rstrip("/"),
            timeout=httpx.Timeout(settings.request_timeout_s, connect=settings.remote_timeout_s),
        )
        self.model: str | None = spec.served_model_name
        self._tokenizer_tried = False
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        self.state = "stopped"
        await self.client.aclose()
        if self._session is not None:
            await self._session.close()

    def _unreachable(self, why: str) -> EngineUnavailable:
        self.fail(f"unreachable: {why}")
        return EngineUnavailable(f"specialist {self.name!r}: unreachable: {why}")

    async def start(self) -> None:
        await self.check_health()
        if not self.ready:
            raise EngineUnavailable(self.error or "unreachable")

    async def check_health(self) -> None:
        if self.state in ("stopped", "given_up"):
            return
        try:
            timeout = self.settings.remote_timeout_s
            (await self.client.get("/health", timeout=timeout)).raise_for_status()
            if self.model is None or self.max_model_len is None or not self._tokenizer_tried:
                models = (await self.client.get("/v1/models", timeout=timeout)).raise_for_status().json()["data"]
                info = next((m for m in models if m["id"] == self.model), models[0])
                self.model = info["id"]
                self.max_model_len = info.get("max_model_len")
                await self._load_tokenizer(info.get("root"))
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
            reason = f"unreachable: {self.spec.path}: {type(e).__name__}: {e}"
            if self.state == "ready":
                self.fail(reason)
            else:
                self.error = reason  # starting: the supervisor records the failed attempt
            return
        # starting: connected; failed without fail() (marked by hand): it answers, so it is ready
        if self.state == "starting" or (self.state == "failed" and not self.died.is_set()):
            self.error = None
            self.state = "ready"
        await self._scrape_scheduler()

    async def _scrape_scheduler(self) -> None:
        """Copy the server's scheduler gauges (its vllm:* metrics for our model) into the gateway's metrics."""
        try:
            resp = (await self.client.get("/metrics", timeout=self.settings.remote_timeout_s)).raise_for_status()
            running, waiting, usage = scheduler_gauges(resp.text, self.model)
        except (httpx.HTTPError, ValueError) as e:
            log.debug("%s: no scheduler metrics from %s: %s", self.name, self.spec.path, e)
            return
        self.metrics.engine_scheduler(self.name, running, waiting, usage)

    async def _load_tokenizer(self, root: str | None) -> None:
        self._tokenizer_tried = True
        source = self.spec.tokenizer or root
        if not source:
            return
        try:
            self.tokenizer = await asyncio.to_thread(_load_tokenizer, source)
        except Exception as e:  # noqa: BLE001 - any failure: fall back to the server's chat template
            log.warning("%s: no tokenizer from %s (%s); prompts go through /v1/chat/completions", self.name, source, e)

    async def stream(
        self, source: str, target: str, text: str, params: GenerationParams, incremental: bool = True
    ) -> AsyncIterator[Generation]:
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k > 0 else -1,
            "seed": params.seed,
            "repetition_penalty": params.repetition_penalty,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
        }
        if incremental:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        prompt_tokens = 0
        if self.tokenizer is not None:
            prompt = render(self.tokenizer, source, target, text)
            if prompt_may_not_fit(prompt, params.max_tokens, self.max_model_len):
                prompt_tokens = len(self.tokenizer.encode(prompt, add_special_tokens=False))  # to clamp max_tokens
            body |= {"prompt": prompt, "add_special_tokens": False}
            url, chat = "/v1/completions", False
        else:
            body["messages"] = translation_messages(source, target, text)
            url, chat = "/v1/chat/completions", True
        body["max_tokens"] = self.clamp_max_tokens(prompt_tokens, params.max_tokens)

        if not incremental:
            yield await self._complete(url, chat, body, prompt_tokens)
            return
        out, tokens, finish = "", 0, None
        try:
            async with self.client.stream("POST", url, json=body) as resp:
                if resp.status_code >= 400:
                    raise self._refused(resp.status_code, (await resp.aread()).decode(errors="replace")[:500])
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if usage := event.get("usage"):
                        prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                        tokens = usage.get("completion_tokens", tokens)
                    for choice in event.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                        if delta:
                            out += delta
                            tokens += 1  # one token per streamed chunk; usage corrects it at the end
                        finish = choice.get("finish_reason") or finish
                        yield Generation(out, tokens, prompt_tokens)
        except httpx.HTTPError as e:
            raise self._unreachable(f"{type(e).__name__}: {e}") from e
        except (json.JSONDecodeError, AttributeError, TypeError) as e:
            raise EngineUnavailable(f"specialist {self.name!r}: malformed stream from the server: {e}") from e
        yield Generation(out, tokens, prompt_tokens, True, finish)

    def _refused(self, status: int, detail: str) -> EngineError:
        if status in (400, 413, 422):
            return EngineInputError(f"specialist {self.name!r} refused the input: {detail}")
        return self._unreachable(f"server answered {status}: {detail}")

    async def _complete(self, url: str, chat: bool, body: dict[str, Any], prompt_tokens: int) -> Generation:
        """One non-streamed call: a single JSON answer (no per-token events to parse). Through aiohttp, which
        takes half the gateway CPU of httpx per call (0.74 vs 1.42 ms per request, gateway and all, measured
        against a stand-in server); httpx serves the health checks and streams."""
        if self._session is None:  # made here: an aiohttp session belongs to the running event loop
            self._session = aiohttp.ClientSession(
                base_url=self.spec.path.rstrip("/") + "/",
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s,
                                              sock_connect=self.settings.remote_timeout_s),
                connector=aiohttp.TCPConnector(limit=0),  # the engine's queue limit bounds the calls
            )
        try:
            async with self._session.post(url.lstrip("/"), json=body) as resp:
                raw = await resp.read()
                status = resp.status
            if status >= 400:
                raise self._refused(status, raw.decode(errors="replace")[:500])
            data = json.loads(raw)
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
            usage = data.get("usage") or {}
            return Generation(
                text or "", usage.get("completion_tokens", 0), usage.get("prompt_tokens", prompt_tokens), True,
                choice.get("finish_reason"),
            )
        except (aiohttp.ClientError, TimeoutError) as e:
            raise self._unreachable(f"{type(e).__name__}: {e}") from e
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:
            raise EngineUnavailable(f"specialist {self.name!r}: malformed answer from the server: {e}") from e


EngineFactory = Callable[[SpecialistSpec, Settings, GatewayMetrics, float], Engine]
"""Builds the engine of one specialist: (spec, settings, metrics, its share of the GPU memory)."""


def vllm_engine(spec: SpecialistSpec, settings: Settings, metrics: GatewayMetrics, memory_share: float) -> Engine:
    """The served engines: a vLLM server over HTTP for a URL path, an in-process vLLM otherwise."""
    if spec.remote:
        return RemoteVllmEngine(spec, settings, metrics)
    return LocalVllmEngine(spec, settings, metrics, memory_share)


def give_up_reason(engine: Engine, failures: int, settings: Settings) -> str | None:
    """Why a failed ``engine`` is not restarted again (None: it is restarted)."""
    if engine.incurable:
        return "a restart cannot heal its configuration"
    if not engine.restartable_forever and failures >= settings.engine_max_restarts:
        return (f"{failures} restarts in a row failed or did not stay up for "
                f"{settings.engine_restart_max_delay_s:.0f} s")
    return None


class EnginePool:
    """The engines of every served model, each started and watched by its own supervisor task: health-checked
    every ``health_interval_s``, restarted with exponential backoff when it fails (see the module doc)."""

    def __init__(
        self, specs: list[SpecialistSpec], settings: Settings, metrics: GatewayMetrics,
        engine_factory: EngineFactory = vllm_engine,
    ):
        self.settings = settings
        self.metrics = metrics
        local = [s for s in specs if not s.remote]
        share = settings.gpu_memory_share / max(len(local), 1)
        self.engines: dict[str, Engine] = {s.name: engine_factory(s, settings, metrics, share) for s in specs}
        self._supervisors: list[asyncio.Task] = []
        self.draining = False  # SIGTERM: nothing new is admitted, /readyz fails
        self._plan_checks = asyncio.Lock()  # one plan check at a time: plans of one base hash it once
        for engine in self.engines.values():
            if engine.sizes_known:
                metrics.describe(engine.spec)
            metrics.queue_limit.labels(engine.name).set(engine.limit)
        for source in self.engines:  # every overflow route is a series from the start (at 0), as Prometheus advises
            for target in self.engines:
                if source != target:
                    metrics.overflows.labels(source, target)
        self.refresh_metrics()

    def routes(self) -> list[Route]:
        return [engine.route() for engine in self.engines.values()]

    def get(self, name: str) -> Engine | None:
        return self.engines.get(name)

    @property
    def alive(self) -> bool:
        """False when no engine can ever serve again (all given up): the process should be replaced."""
        return any(e.recoverable for e in self.engines.values())

    def inflight(self) -> int:
        return sum(e.inflight for e in self.engines.values())

    def retry_after(self, names: list[str]) -> str | None:
        """Retry-After for a request these engines could serve: the soonest expected recovery among them;
        None when none of them will ever serve again."""
        waits = [w for n in names if (e := self.engines.get(n)) is not None and (w := e.expected_wait()) is not None]
        return retry_after_header(min(waits)) if waits else None

    def refresh_metrics(self) -> None:
        for e in self.engines.values():
            self.metrics.engine_ready.labels(e.name, e.backend).set(1 if e.ready else 0)
            e.account_time()
        self.metrics.draining.set(1 if self.draining else 0)

    async def _check_plan(self, engine: Engine) -> None:
        """A plan-backed engine: check its plan and make its view (``plan_spec``, in a worker thread), then
        serve the view and describe the specialist in the metrics; on ``PlanUnusable`` its sizes are
        forgotten. Not bounded by ``engine_start_timeout_s``: a thread cannot be stopped, and hashing a large
        base on a slow disk may take longer (each file is hashed once, then cached by size and mtime)."""
        if plan_file(engine.configured) is None:
            return
        engine.served = None
        self.metrics.forget(engine.name)
        async with self._plan_checks:
            engine.served = await asyncio.to_thread(plan_spec, engine.configured, self.settings.views_dir)
        self.metrics.describe(engine.served)

    async def _start_one(self, engine: Engine) -> bool:
        """One start (or reconnect) attempt: True when the engine is ready. A remote engine being reconnected
        stays failed until its server answers."""
        if not (engine.restartable_forever and engine.state == "failed"):
            engine.state = "starting"
        engine.start_began = time.monotonic()
        try:
            await self._check_plan(engine)
            async with asyncio.timeout(self.settings.engine_start_timeout_s):
                await engine.start()
        except Exception as e:  # noqa: BLE001 - one failing engine must not stop the others
            if engine.state == "stopped":
                return False
            log.warning("specialist %s failed to start: %s: %s", engine.name, type(e).__name__, e,
                        exc_info=not isinstance(e, EngineUnavailable | PlanUnusable | EngineConfigError))
            with contextlib.suppress(Exception):
                await engine.reset()
            engine.fail(f"start-up failed: {type(e).__name__}: {e}")
            engine.incurable = isinstance(e, EngineConfigError)
            return False
        finally:
            self.refresh_metrics()
        engine.start_estimate = time.monotonic() - engine.start_began
        log.info("specialist %s (%s): ready in %.1f s", engine.name, engine.backend, engine.start_estimate)
        return engine.ready

    async def _watch(self, engine: Engine) -> None:
        """Return when the ready ``engine`` fails (its ``died`` event) or is stopped; health-check it meanwhile."""
        while engine.state not in ("stopped", "given_up"):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.health_interval_s):
                    await engine.died.wait()
            if engine.died.is_set():
                return
            await engine.check_health()
            self.refresh_metrics()

    async def supervise(self, engine: Engine) -> None:
        """Start ``engine``; whenever it fails, restart it after ``backoff_delay``. An in-process engine that
        failed ``engine_max_restarts`` restarts in a row is given up; a run of failures ends when an engine
        stays ready for ``engine_restart_max_delay_s``."""
        s = self.settings
        failures = 0
        while engine.state not in ("stopped", "given_up"):
            engine.died.clear()
            if await self._start_one(engine):
                ready_since = time.monotonic()
                await self._watch(engine)
                if time.monotonic() - ready_since >= s.engine_restart_max_delay_s:
                    failures = 0
            if engine.state in ("stopped", "given_up"):
                break
            log.warning("specialist %s failed: %s", engine.name, engine.error)
            if self.draining:  # shutting down (a killpg reaches the engine cores too): no restart
                break
            why = give_up_reason(engine, failures, s)
            if why is not None:
                log.error("specialist %s: given up (%s): %s", engine.name, why, engine.error)
                engine.retry_at = None
                engine.state = "given_up"
                with contextlib.suppress(Exception):
                    await engine.reset()
                self.refresh_metrics()
                break
            delay = backoff_delay(failures, s.engine_restart_initial_delay_s, s.engine_restart_max_delay_s)
            failures += 1
            engine.retry_at = time.monotonic() + delay
            if engine.state != "failed":  # e.g. a start that ended with the engine not ready
                engine.fail(engine.error or "not ready after start")
            with contextlib.suppress(Exception):
                await engine.reset()
            log.info("specialist %s: restart %d in %.1f s", engine.name, failures, delay)
            await asyncio.sleep(max(engine.retry_at - time.monotonic(), 0.0))
            engine.retry_at = None
            engine.restarts += 1
            self.metrics.engine_restarts.labels(engine.name).inc()

    async def start(self) -> None:
        """Start every engine (concurrently) under its supervisor; return when each first attempt ended."""
        self._supervisors = [asyncio.create_task(self.supervise(e), name=f"supervise-{e.name}")
                             for e in self.engines.values()]
        while any(e.state == "starting" and e.restarts == 0 for e in self.engines.values()):
            await asyncio.sleep(0.1)

    async def check_health(self) -> None:
        await asyncio.gather(*(e.check_health() for e in self.engines.values() if e.state != "starting"))
        self.refresh_metrics()

    async def drain(self, timeout: float) -> bool:
        """Admit nothing new and wait up to ``timeout`` s for the admitted texts to finish: True when they did."""
        self.draining = True
        self.refresh_metrics()
        deadline = time.monotonic() + timeout
        while self.inflight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.inflight() == 0

    async def close(self) -> None:
        for task in self._supervisors:
            task.cancel()
        for task in self._supervisors:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(e.close() for e in self.engines.values()), return_exceptions=True)
