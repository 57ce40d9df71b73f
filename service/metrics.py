"""Every Prometheus metric of the gateway, defined here and registered on a per-app ``CollectorRegistry``
(never the process-global one, so two apps in one process - tests - do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    """The gateway's metrics. Labels: ``specialist`` (model name, "none" before routing), ``direction``
    ("en-de"), ``status`` (HTTP status code)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
            "moe_gateway_inflight_requests", "Texts being translated or queued, per engine", ["specialist"],
            registry=r,
        )
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
            ["specialist", "reason"], registry=r,
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
