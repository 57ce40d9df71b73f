"""Every Prometheus metric of the gateway, defined here and registered on a per-app ``CollectorRegistry``
(never the process-global one, so two apps in one process - tests - do not collide).

Families: ``moe_specialist_*`` (what a specialist is: bytes, experts, parameters; set once),
``moe_engine_*`` (what its engine holds and does, refreshed from the engine), ``moe_gateway_*`` (traffic), and
``process_*`` (the gateway process: resident memory, CPU). vLLM's own ``vllm:*`` metrics are on each remote vLLM
server's /metrics (scraped directly); in-process engines report through ``moe_engine_*`` instead, since vLLM
keeps one global set of ``vllm:*`` metrics per process and several engines would overwrite each other's."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from moe_specialists.service.settings import SpecialistSpec

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    """The gateway's metrics. Labels: ``specialist`` (model name), ``direction``
    ("en-de"), ``status`` (HTTP status code, or 499 for a request cut off), ``reason`` of a rejection."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.request_latency = Histogram(
            "moe_gateway_request_latency_seconds",
            "End-to-end latency of translation requests",
            ["specialist", "direction"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "moe_gateway_time_to_first_token_seconds",
            "Time from request admission to the first generated token",
            ["specialist", "direction"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "moe_gateway_inflight_requests", "Texts admitted and not answered yet (queued or generating)",
            ["specialist", "direction"], registry=r,
        )
        self.queued = Gauge(
            "moe_gateway_queued_requests", "Texts admitted that have no generated token yet (queue depth)",
            ["specialist", "direction"], registry=r,
        )
        self.queue_limit = Gauge(
            "moe_gateway_queue_limit", "Texts an engine admits at once; beyond it requests get 429", ["specialist"],
            registry=r,
        )
        # Per-key quotas (``key`` is a short hash of the API key, never the key; "anonymous" without one).
        self.quota_requests = Counter(
            "moe_gateway_quota_requests_total", "Requests counted against a key's quota", ["key"], registry=r,
        )
        self.quota_characters = Counter(
            "moe_gateway_quota_characters_total", "Characters counted against a key's daily quota", ["key"],
            registry=r,
        )
        self.quota_rejections = Counter(
            "moe_gateway_quota_rejections_total", "Requests refused by a quota (kind: requests, characters)",
            ["key", "kind"], registry=r,
        )
        self.glossary_terms = Counter(
            "moe_gateway_glossary_terms_total", "Glossary term occurrences by how the target term got into the "
            "output: placeholder (copied by the model), model (its own translation), replaced, appended",
            ["how"], registry=r,
        )
        # The translation cache (service.cache): segment answers served without an engine.
        self.cache_hits = Counter(
            "moe_gateway_translation_cache_hits_total", "Segments answered from the translation cache",
            ["specialist"], registry=r,
        )
        self.cache_misses = Counter(
            "moe_gateway_translation_cache_misses_total", "Segments looked up in the translation cache and not "
            "found (then generated)", ["specialist"], registry=r,
        )
        self.cache_evictions = Counter(
            "moe_gateway_translation_cache_evictions_total", "Entries evicted to make room (least recently used)",
            registry=r,
        )
        self.cache_bytes = Gauge("moe_gateway_translation_cache_bytes", "Bytes the translation cache holds",
                                 registry=r)
        self.cache_entries = Gauge("moe_gateway_translation_cache_entries", "Entries the translation cache holds",
                                   registry=r)
        self.cache_capacity = Gauge("moe_gateway_translation_cache_capacity_bytes",
                                    "Bytes the translation cache may hold (0: no cache)", registry=r)
        self.requests = Counter(
            "moe_gateway_requests_total", "Translation requests by outcome", ["specialist", "direction", "status"],
            registry=r,
        )
        self.http_responses = Counter(
            "moe_gateway_http_responses_total", "HTTP responses by route and status", ["route", "method", "status"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "moe_gateway_generated_tokens_total", "Tokens generated", ["specialist", "direction"], registry=r
        )
        self.prompt_tokens = Counter(
            "moe_gateway_prompt_tokens_total", "Prompt tokens processed", ["specialist", "direction"], registry=r
        )
        self.rejections = Counter(
            "moe_gateway_rejections_total", "Requests refused by the gateway (queue full, engine down, timeout)",
            ["specialist", "direction", "reason"], registry=r,
        )
        self.engine_ready = Gauge(
            "moe_gateway_engine_ready", "1 when the engine of a specialist is ready", ["specialist", "backend"],
            registry=r,
        )
        self.weight_bytes = Gauge(
            "moe_specialist_weight_bytes", "Weight bytes of a specialist", ["specialist"], registry=r
        )
        self.base_weight_bytes = Gauge(
            "moe_specialist_base_weight_bytes", "Weight bytes of the specialist's base model", ["specialist"],
            registry=r,
        )
        self.bytes_saved = Gauge(
            "moe_specialist_bytes_saved", "Weight bytes saved against the base model", ["specialist"], registry=r
        )
        self.saved_ratio = Gauge(
            "moe_specialist_bytes_saved_ratio", "Bytes saved / base weight bytes (0: nothing pruned)", ["specialist"],
            registry=r,
        )
        self.experts_kept = Gauge(
            "moe_specialist_experts_kept", "Experts kept, summed over MoE layers", ["specialist"], registry=r
        )
        self.experts_total = Gauge(
            "moe_specialist_experts_total", "Experts of the base model, summed over MoE layers", ["specialist"],
            registry=r,
        )
        self.parameters = Gauge("moe_specialist_parameters", "Parameters of a specialist", ["specialist"], registry=r)
        self.engine_memory = Gauge(
            "moe_engine_memory_bytes",
            "Memory an in-process engine holds, measured in its worker: weights, kv_cache, device_reserved (GPU)",
            ["specialist", "kind"], registry=r,
        )
        self.kv_cache_usage = Gauge(
            "moe_engine_kv_cache_usage_ratio", "Fraction of the engine's KV cache in use (0 to 1)", ["specialist"],
            registry=r,
        )
        self.engine_state = Gauge(
            "moe_engine_state", "1 for the state an engine is in (starting, ready, failed, given_up, stopped)",
            ["specialist", "state"], registry=r,
        )
        self.engine_state_seconds = Counter(
            "moe_engine_state_seconds", "Seconds an engine has spent in each state", ["specialist", "state"],
            registry=r,
        )
        self.engine_restarts = Counter(
            "moe_engine_restarts", "Restarts of a failed engine (reconnects of a remote one)", ["specialist"],
            registry=r,
        )
        self.engine_failures = Counter(
            "moe_engine_failures", "Times an engine failed (died, unreachable, failed to start)", ["specialist"],
            registry=r,
        )
        self.engine_last_failure = Gauge(
            "moe_engine_last_failure_timestamp_seconds", "Unix time of an engine's last failure, labelled with its "
            "reason (only the last reason is kept)", ["specialist", "reason"], registry=r,
        )
        self.overflows = Counter(
            "moe_gateway_overflow", "Texts sent to another capable specialist because the chosen one's queue was "
            "full", ["specialist", "to"], registry=r,
        )
        self.draining = Gauge(
            "moe_gateway_draining", "1 while the gateway shuts down (SIGTERM): nothing new is admitted", registry=r
        )
        self._last_reason: dict[str, str] = {}
        self.engine_requests = Gauge(
            "moe_engine_requests", "Requests inside the engine's scheduler by state (running, waiting)",
            ["specialist", "state"], registry=r,
        )

    def describe(self, spec: SpecialistSpec) -> None:
        """Set what a specialist is: weight bytes, savings, experts and parameters."""
        name, saved = spec.name, max(spec.base_weight_bytes - spec.weight_bytes, 0)
        self.weight_bytes.labels(name).set(spec.weight_bytes)
        self.base_weight_bytes.labels(name).set(spec.base_weight_bytes)
        self.bytes_saved.labels(name).set(saved)
        self.saved_ratio.labels(name).set(saved / spec.base_weight_bytes if spec.base_weight_bytes else 0)
        self.experts_kept.labels(name).set(spec.experts_kept)
        self.experts_total.labels(name).set(spec.experts_total)
        self.parameters.labels(name).set(spec.parameters)

    def forget(self, name: str) -> None:
        """Remove what ``describe`` set for ``name`` (a plan whose check failed: its sizes are unknown, so the
        series are absent rather than 0)."""
        for gauge in (self.weight_bytes, self.base_weight_bytes, self.bytes_saved, self.saved_ratio,
                      self.experts_kept, self.experts_total, self.parameters):
            with contextlib.suppress(KeyError):
                gauge.remove(name)

    def engine_state_changed(self, name: str, old: str | None, new: str) -> None:
        if old is not None:
            self.engine_state.labels(name, old).set(0)
        self.engine_state.labels(name, new).set(1)

    def engine_failed(self, name: str, reason: str) -> None:
        """Count a failure of ``name`` and keep ``reason`` as its last one."""
        self.engine_failures.labels(name).inc()
        old = self._last_reason.get(name)
        if old is not None and old != reason:
            self.engine_last_failure.remove(name, old)
        self._last_reason[name] = reason
        self.engine_last_failure.labels(name, reason).set(time.time())

    def engine_scheduler(self, name: str, running: int, waiting: int, kv_cache_usage: float) -> None:
        self.engine_requests.labels(name, "running").set(running)
        self.engine_requests.labels(name, "waiting").set(waiting)
        self.kv_cache_usage.labels(name).set(kv_cache_usage)

    def render(self) -> bytes:
        return generate_latest(self.registry)
