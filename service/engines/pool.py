"""Supervision (``EnginePool``): every engine has one lifecycle, in-process or remote:
``starting -> ready -> failed -> starting -> ...`` and, for an in-process engine that fails
``engine_max_restarts`` restarts in a row or whose configuration cannot work (``EngineConfigError``),
``given_up``; ``stopped`` after close. A failed engine is reset (an in-process one: its engine core's
processes ended) and restarted (a remote one reconnected) after ``backoff_delay`` seconds; a remote one is
never given up (the gateway cannot restart a server it does not run). ``vllm_engine`` builds the engine of
each specialist: remote for a URL, in-process otherwise.

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
import logging
import time
from collections.abc import Callable

from moe_specialists.service.engines.base import (
    Engine,
    EngineConfigError,
    EngineUnavailable,
    backoff_delay,
    identity,
    retry_after_header,
)
from moe_specialists.service.engines.local import LocalVllmEngine
from moe_specialists.service.engines.remote import RemoteVllmEngine
from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.plans import PlanUnusable, plan_file, plan_spec
from moe_specialists.service.routing import Route
from moe_specialists.service.settings import Settings, SpecialistSpec

log = logging.getLogger(__name__)


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
        engine.identity = await asyncio.to_thread(identity, engine.spec, engine.restarts)
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
