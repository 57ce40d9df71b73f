"""An in-memory ``Engine`` for the tests of the gateway's HTTP layer.

Why it exists: validation (400/413/422), routing choices, error bodies, queue limits, timeouts, API keys and
CORS are the gateway's work, not vLLM's; those tests need an engine only to be routed to and admitted into.
Starting vLLM for them costs tens of seconds of CPU per engine, so they run against this fake, which
implements the ``Engine`` ABC without a model (queue admission, context clamping and states are the ABC's own
code). It "translates" by echoing the text one word per token, as vLLM streams cumulative raw text, and ends
with an end-of-turn token, so the gateway's extraction still has something to strip. The tests of serving
itself (real output, streaming from the engine, engine metrics, remote vLLM servers) use the real engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from moe_specialists.service.engines.base import Engine, EngineUnavailable, Generation, GenerationParams
from moe_specialists.service.engines.pool import EngineFactory
from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.settings import Settings, SpecialistSpec

END = "<|im_end|>"


class FakeEngine(Engine):
    backend = "fake"

    def __init__(self, spec: SpecialistSpec, settings: Settings, metrics: GatewayMetrics, token_delay_s: float):
        super().__init__(spec, settings, metrics)
        self.token_delay_s = token_delay_s
        self.max_model_len = settings.max_model_len

    async def start(self) -> None:
        self.state, self.error = "ready", None

    async def close(self) -> None:
        self.state = "stopped"

    async def check_health(self) -> None:
        """Nothing can die here: the state stays what the test set."""

    async def stream(
        self, source: str, target: str, text: str, params: GenerationParams, incremental: bool = True
    ) -> AsyncIterator[Generation]:
        if not self.ready:
            raise EngineUnavailable(f"specialist {self.name!r} is {self.state}")
        words = text.split()
        prompt_tokens = len(words)
        out = words[: self.clamp_max_tokens(prompt_tokens, params.max_tokens)]
        for n in range(1, len(out) + 1):
            await asyncio.sleep(self.token_delay_s)  # one engine step per token: other requests run meanwhile
            if incremental:
                yield Generation(" ".join(out[:n]), n, prompt_tokens)
        stopped = len(out) == len(words)
        raw = " ".join(out) + (END if stopped else "")
        yield Generation(raw, len(out), prompt_tokens, True, "stop" if stopped else "length")


def fake_engines(token_delay_s: float = 0.0) -> EngineFactory:
    """An ``engine_factory`` for ``create_app``: every specialist served by a ``FakeEngine``."""

    def build(spec: SpecialistSpec, settings: Settings, metrics: GatewayMetrics, memory_share: float) -> Engine:
        return FakeEngine(spec, settings, metrics, token_delay_s)

    return build
