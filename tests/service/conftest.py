"""Shared fixtures: a tiny random Qwen3-MoE checkpoint (built locally, no download) and app helpers."""

from __future__ import annotations

import os
import socket
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from tests.tiny import save_tiny  # noqa: E402

READY_TIMEOUT_S = 420


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny("qwen3_moe", tmp_path_factory.mktemp("tiny-qwen3-moe"), layers=2, experts=8, top_k=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(client, timeout: float = READY_TIMEOUT_S, want_all: bool = True) -> dict:
    """Poll /readyz until every specialist is ready (or one failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get("/readyz").json()
        states = [s["state"] for s in body["specialists"].values()]
        if all(s == "ready" for s in states) or (not want_all and "ready" in states):
            return body
        if "failed" in states:
            pytest.fail(f"an engine failed to start: {body}")
        time.sleep(1)
    pytest.fail(f"engines not ready after {timeout} s: {body}")
