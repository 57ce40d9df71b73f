"""Engines: one interface, two implementations.

* ``LocalVllmEngine``: an in-process vLLM ``AsyncLLM`` per specialist (its GPU memory share from settings).
* ``RemoteVllmEngine``: a vLLM OpenAI-compatible server (``vllm serve``) reached over HTTP; the scale-out path.

Both render the prompt with ``models.prompts.render`` (the calibration template) and stream cumulative raw
text decoded with special tokens, which ``service.extract`` cleans. Each engine admits at most
``max_queue_per_engine`` texts at a time (``slot``); beyond that ``EngineBusy`` (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from moe_specialists.models.prompts import render, translation_messages
from moe_specialists.models.vllm_worker import PROBE
from moe_specialists.service.metrics import GatewayMetrics
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


class Engine(ABC):
    backend: str = "?"

    def __init__(self, spec: SpecialistSpec, settings: Settings, metrics: GatewayMetrics):
        self.spec = spec
        self.settings = settings
        self.metrics = metrics
        self.state = "starting"  # starting | ready | failed | unreachable | stopped
        self.error: str | None = None
        self.inflight = 0
        self.limit = settings.max_queue_per_engine
        self.tokenizer: Any = None
        self.max_model_len: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def route(self) -> Route:
        return make_route(self.name, self.spec.directions, self.spec.languages, self.spec.base, self.ready)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "state": self.state,
            "error": self.error,
            "inflight": self.inflight,
            "queue_limit": self.limit,
        }

    @property
    def end_markers(self) -> tuple[str, ...]:
        eos = getattr(self.tokenizer, "eos_token", None)
        return (eos,) if isinstance(eos, str) and eos else ()

    @contextlib.contextmanager
    def slot(self, n: int = 1) -> Iterator[None]:
        """Admit ``n`` texts or raise ``EngineBusy``; ``EngineUnavailable`` when not ready."""
        if not self.ready:
            why = f": {self.error}" if self.error else ""
            raise EngineUnavailable(f"specialist {self.name!r} is {self.state}{why}")
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
        """Update ``state`` from the engine (never raises)."""

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
    """A vLLM stat-logger factory that copies the scheduler's state (running, waiting, KV-cache usage) of the
    engine of specialist ``name`` into the gateway's metrics on every engine step."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerToMetrics(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0):
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx=0):
            if scheduler_stats is not None:
                s = scheduler_stats
                metrics.engine_scheduler(name, s.num_running_reqs, s.num_waiting_reqs, s.kv_cache_usage)

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

        args = AsyncEngineArgs(
            model=self.spec.path,
            tokenizer=self.spec.tokenizer or self.spec.path,
            served_model_name=[self.spec.name],
            dtype=self.settings.dtype,
            max_model_len=self.settings.max_model_len,
            max_num_seqs=self.settings.max_num_seqs,
            gpu_memory_utilization=self.memory_share,
            enforce_eager=self.settings.enforce_eager,
            disable_log_stats=True,  # vLLM's own loggers off; ours (scheduler_logger) on
            worker_extension_cls=PROBE,
        )
        self.tokenizer = await asyncio.to_thread(_load_tokenizer, self.spec.tokenizer or self.spec.path)
        # The constructor blocks until the engine core is up (tens of seconds): keep the event loop free.
        self.llm = await asyncio.to_thread(
            AsyncLLM.from_engine_args, args, stat_loggers=[scheduler_logger(self.metrics, self.name)]
        )
        self.max_model_len = int(self.llm.model_config.max_model_len)
        for kind, nbytes in (await self.llm.collective_rpc("engine_memory"))[0].items():
            self.metrics.engine_memory.labels(self.name, kind).set(nbytes)
        self.state, self.error = "ready", None

    async def close(self) -> None:
        self.state = "stopped"
        if self.llm is not None:
            llm, self.llm = self.llm, None
            await asyncio.to_thread(llm.shutdown)

    async def check_health(self) -> None:
        if self.llm is not None and self.state in ("ready", "failed"):
            if self.llm.errored:
                self.state, self.error = "failed", "the vLLM engine core died"
            else:
                self.state, self.error = "ready", None

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
            self.state, self.error = "failed", "the vLLM engine core died"
            raise EngineUnavailable(f"specialist {self.name!r}: {self.error}") from e
        except (VLLMClientError, ValueError) as e:
            raise EngineInputError(f"specialist {self.name!r} refused the input: {e}") from e
        except Exception as e:  # EngineGenerateError and the like: the request failed, the engine lives on
            raise EngineUnavailable(f"specialist {self.name!r}: generation failed: {type(e).__name__}: {e}") from e


def scheduler_gauges(exposition: str, model: str | None) -> tuple[int, int, float]:
    """(running, waiting, KV-cache usage) of ``model`` from a vLLM server's Prometheus text: requests summed
    over its engines, the KV-cache usage of the fullest one."""
    from prometheus_client.parser import text_string_to_metric_families

    running = waiting = usage = 0.0
    for family in text_string_to_metric_families(exposition):
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

    def __init__(self, spec: SpecialistSpec, settings: Settings, metrics: GatewayMetrics):
        super().__init__(spec, settings, metrics)
        self.client = httpx.AsyncClient(
            base_url=spec.path.rstrip("/"),
            timeout=httpx.Timeout(settings.request_timeout_s, connect=settings.remote_timeout_s),
        )
        self.model: str | None = spec.served_model_name
        self._tokenizer_tried = False

    async def start(self) -> None:
        await self.check_health()

    async def close(self) -> None:
        self.state = "stopped"
        await self.client.aclose()

    def _unreachable(self, why: str) -> EngineUnavailable:
        self.state, self.error = "unreachable", why
        return EngineUnavailable(f"specialist {self.name!r}: {why}")

    async def check_health(self) -> None:
        if self.state == "stopped":
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
            self.state, self.error = "ready", None
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
            self.state, self.error = "unreachable", f"{self.spec.path}: {type(e).__name__}: {e}"
            return
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
            prompt_tokens = len(self.tokenizer.encode(prompt, add_special_tokens=False))
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
                    raise self._refused(resp, (await resp.aread()).decode(errors="replace")[:500])
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

    def _refused(self, resp: httpx.Response, detail: str) -> EngineError:
        if resp.status_code in (400, 413, 422):
            return EngineInputError(f"specialist {self.name!r} refused the input: {detail}")
        return self._unreachable(f"server answered {resp.status_code}: {detail}")

    async def _complete(self, url: str, chat: bool, body: dict[str, Any], prompt_tokens: int) -> Generation:
        """One non-streamed call: a single JSON answer (no per-token events to parse)."""
        try:
            resp = await self.client.post(url, json=body)
            if resp.status_code >= 400:
                raise self._refused(resp, resp.text[:500])
            data = resp.json()
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
            usage = data.get("usage") or {}
            return Generation(
                text or "", usage.get("completion_tokens", 0), usage.get("prompt_tokens", prompt_tokens), True,
                choice.get("finish_reason"),
            )
        except httpx.HTTPError as e:
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


class EnginePool:
    """The engines of every served model, started together and health-checked in the background."""

    def __init__(
        self, specs: list[SpecialistSpec], settings: Settings, metrics: GatewayMetrics,
        engine_factory: EngineFactory = vllm_engine,
    ):
        self.settings = settings
        self.metrics = metrics
        local = [s for s in specs if not s.remote]
        share = settings.gpu_memory_share / max(len(local), 1)
        self.engines: dict[str, Engine] = {s.name: engine_factory(s, settings, metrics, share) for s in specs}
        self._health_task: asyncio.Task | None = None
        for engine in self.engines.values():
            metrics.describe(engine.spec)
            metrics.queue_limit.labels(engine.name).set(engine.limit)
        self.refresh_metrics()

    def routes(self) -> list[Route]:
        return [engine.route() for engine in self.engines.values()]

    def get(self, name: str) -> Engine | None:
        return self.engines.get(name)

    def refresh_metrics(self) -> None:
        for e in self.engines.values():
            self.metrics.engine_ready.labels(e.name, e.backend).set(1 if e.ready else 0)

    async def _start_one(self, engine: Engine) -> None:
        try:
            async with asyncio.timeout(self.settings.engine_start_timeout_s):
                await engine.start()
        except Exception as e:  # noqa: BLE001 - one failing engine must not stop the others
            log.exception("specialist %s failed to start", engine.name)
            engine.state, engine.error = "failed", f"start-up failed: {type(e).__name__}: {e}"
        log.info("specialist %s (%s): %s", engine.name, engine.backend, engine.state)
        self.refresh_metrics()

    async def start(self) -> None:
        """Start every engine (concurrently), then check their health every ``health_interval_s``."""
        await asyncio.gather(*(self._start_one(e) for e in self.engines.values()))
        self._health_task = asyncio.create_task(self._health_loop())

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await self.check_health()

    async def check_health(self) -> None:
        await asyncio.gather(*(e.check_health() for e in self.engines.values() if e.state != "starting"))
        self.refresh_metrics()

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await asyncio.gather(*(e.close() for e in self.engines.values()), return_exceptions=True)
