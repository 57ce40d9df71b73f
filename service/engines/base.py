"""The engine interface: the ``Engine`` ABC (states, queue slots, context clamping), the errors an engine
reports, what it takes and yields (``GenerationParams``, ``Generation``), and the supervision maths (restart
backoff, the expected wait behind Retry-After, failure labels).

Every engine renders the prompt with ``models.prompts.render`` (the calibration template) and streams
cumulative raw text decoded with special tokens, which ``service.extract`` cleans. Each engine admits at most
``max_queue_per_engine`` texts at a time (``slot``); beyond that ``EngineBusy`` (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.plans import plan_file
from moe_specialists.service.routing import Route, make_route
from moe_specialists.service.settings import Settings, SpecialistSpec


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


def identity(spec: SpecialistSpec, starts: int) -> str:
    """What a specialist serves, as 16 hex digits: for a local folder (a plan's view included) sha256 of its path
    and every file's (relative name, size, mtime_ns, inode), links followed; for a hub id or a remote server
    (whose weights the gateway cannot see) its path with the number of starts, so each start is new."""
    folder = Path(spec.path)
    h = hashlib.sha256(spec.path.encode())
    if not spec.remote and folder.is_dir():
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"\0{f.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode())
    else:
        h.update(f"\0start {starts}".encode())
    return h.hexdigest()[:16]


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
        self.identity: str | None = None  # what it serves, set at each start (``identity``)
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


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)
