"""Graceful shutdown: ``GracefulServer`` is uvicorn's server with a drain before it stops. On the first
SIGTERM the gateway turns unready and admits nothing new (503, see ``EnginePool.drain``) while it keeps
listening, the admitted requests finish within ``drain_timeout_s``, then uvicorn stops as usual (the
lifespan closes the engines). A second signal (or SIGINT during the drain) stops at once."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class GracefulServer(uvicorn.Server):
    def __init__(self, app: FastAPI, config: uvicorn.Config):
        super().__init__(config)
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Future | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        pool = getattr(self.app.state, "pool", None)
        if sig != signal.SIGTERM or self._drain is not None or self.should_exit or pool is None or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it once stopped, as it does without a drain
        pool.draining = True  # readiness false at once, before the loop runs again
        self._drain = asyncio.run_coroutine_threadsafe(self._drain_then_exit(pool), self._loop)

    async def _drain_then_exit(self, pool: Any) -> None:
        timeout = pool.settings.drain_timeout_s
        log.info("SIGTERM: draining %d in-flight texts (at most %.0f s)", pool.inflight(), timeout)
        if await pool.drain(timeout):
            log.info("drained; shutting down")
        else:
            log.warning("drain timeout: %d texts still in flight are cut off", pool.inflight())
        self.should_exit = True


def run(app: FastAPI, **config: Any) -> None:
    """``uvicorn.run`` with the drain on SIGTERM; requests still running after the drain are cancelled
    within a second."""
    server = GracefulServer(app, uvicorn.Config(app, timeout_graceful_shutdown=1, **config))
    server.run()
