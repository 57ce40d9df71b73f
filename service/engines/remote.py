"""The remote engine: a vLLM OpenAI-compatible server (``vllm serve``) reached over HTTP, the scale-out path.
Health checks, models and the scheduler gauges come from its /health, /v1/models and /metrics.

One HTTP client, aiohttp: measured against httpx with ``benchmarks/remote_client_cpu.py`` (a stand-in server
in another process, the gateway side's CPU per call, ABBA rounds; table in docs/results/gateway-overhead.md),
it took 0.25 - 0.35 ms of CPU per plain call where httpx took 1.4 ms, and 1.4 - 3.3 ms per 16-token stream
where httpx took 4.4 - 7.2 ms, in every pair of rounds."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from moe_specialists.models.prompts import render, translation_messages
from moe_specialists.service.engines.base import (
    Engine,
    EngineError,
    EngineInputError,
    EngineUnavailable,
    Generation,
    GenerationParams,
    load_tokenizer,
)
from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.settings import Settings, SpecialistSpec

log = logging.getLogger(__name__)


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
    template renders the same messages through /v1/chat/completions. Every call goes through one aiohttp
    session (see the module doc for why aiohttp)."""

    backend = "vllm-remote"
    restartable_forever = True

    def __init__(self, spec: SpecialistSpec, settings: Settings, metrics: GatewayMetrics):
        super().__init__(spec, settings, metrics)
        self.model: str | None = spec.served_model_name
        self._tokenizer_tried = False
        self._session: aiohttp.ClientSession | None = None
        # a health check: the whole call within remote_timeout_s; a translation: within request_timeout_s (the
        # gateway bounds it too); a stream: no total, each read within request_timeout_s (tokens keep coming)
        self._check_timeout = aiohttp.ClientTimeout(total=settings.remote_timeout_s)
        self._call_timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s,
                                                   sock_connect=settings.remote_timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(sock_connect=settings.remote_timeout_s,
                                                     sock_read=settings.request_timeout_s)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session to the server, made at first use: an aiohttp session belongs to the running event loop."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self.spec.path.rstrip("/") + "/",
                connector=aiohttp.TCPConnector(limit=0),  # the engine's queue limit bounds the calls
                read_bufsize=2**20,  # the longest SSE line read at once (aiohttp refuses longer ones)
            )
        return self._session

    async def close(self) -> None:
        self.state = "stopped"
        if self._session is not None:
            await self._session.close()

    def _unreachable(self, why: str) -> EngineUnavailable:
        self.fail(f"unreachable: {why}")
        return EngineUnavailable(f"specialist {self.name!r}: unreachable: {why}")

    async def start(self) -> None:
        await self.check_health()
        if not self.ready:
            raise EngineUnavailable(self.error or "unreachable")

    async def _get(self, path: str) -> bytes:
        """The body of a GET of ``path`` within ``remote_timeout_s``; ClientResponseError for a 4xx/5xx."""
        async with self.session.get(path, timeout=self._check_timeout) as resp:
            resp.raise_for_status()
            return await resp.read()

    async def check_health(self) -> None:
        if self.state in ("stopped", "given_up"):
            return
        try:
            await self._get("health")
            if self.model is None or self.max_model_len is None or not self._tokenizer_tried:
                models = json.loads(await self._get("v1/models"))["data"]
                info = next((m for m in models if m["id"] == self.model), models[0])
                self.model = info["id"]
                self.max_model_len = info.get("max_model_len")
                await self._load_tokenizer(info.get("root"))
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError) as e:
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
            running, waiting, usage = scheduler_gauges((await self._get("metrics")).decode(), self.model)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.debug("%s: no scheduler metrics from %s: %s", self.name, self.spec.path, e)
            return
        self.metrics.engine_scheduler(self.name, running, waiting, usage)

    async def _load_tokenizer(self, root: str | None) -> None:
        self._tokenizer_tried = True
        source = self.spec.tokenizer or root
        if not source:
            return
        try:
            self.tokenizer = await asyncio.to_thread(load_tokenizer, source)
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
            url, chat = "v1/completions", False
        else:
            body["messages"] = translation_messages(source, target, text)
            url, chat = "v1/chat/completions", True
        body["max_tokens"] = self.clamp_max_tokens(prompt_tokens, params.max_tokens)

        if not incremental:
            yield await self._complete(url, chat, body, prompt_tokens)
            return
        out, tokens, finish, ended = "", 0, None, False
        try:
            async with self.session.post(url, json=body, timeout=self._stream_timeout) as resp:
                if resp.status >= 400:
                    raise self._refused(resp.status, (await resp.read()).decode(errors="replace")[:500])
                async for raw in resp.content:  # one line at a time
                    line = raw.decode()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        ended = True
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
        except (aiohttp.ClientError, TimeoutError) as e:
            raise self._unreachable(f"{type(e).__name__}: {e}") from e
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as e:
            raise EngineUnavailable(f"specialist {self.name!r}: malformed stream from the server: {e}") from e
        yield Generation(out, tokens, prompt_tokens, ended, finish)  # without ``[DONE]`` the stream was cut off

    def _refused(self, status: int, detail: str) -> EngineError:
        if status in (400, 413, 422):
            return EngineInputError(f"specialist {self.name!r} refused the input: {detail}")
        return self._unreachable(f"server answered {status}: {detail}")

    async def _complete(self, url: str, chat: bool, body: dict[str, Any], prompt_tokens: int) -> Generation:
        """One non-streamed call: a single JSON answer (no per-token events to parse)."""
        try:
            async with self.session.post(url, json=body, timeout=self._call_timeout) as resp:
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
