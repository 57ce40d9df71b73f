"""Shared fixtures: a tiny random Qwen3-MoE checkpoint (built locally, no download), a registry of two pruned
specialists of it with the gateway settings that serve them, and app and server helpers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from moe_specialists.models.registry.store import Registry  # noqa: E402
from moe_specialists.service.settings import Settings, SpecialistSpec  # noqa: E402
from tests.tiny import save_tiny  # noqa: E402

READY_TIMEOUT_S = 420


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny("qwen3_moe", tmp_path_factory.mktemp("tiny-qwen3-moe"), layers=2, experts=8, top_k=2)


KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="session")
def registry_dir(tiny_model_dir, tmp_path_factory):
    """Two PRUNED specialists of the tiny model (per-layer expert counts 6/4 and 4/5 of 8, so vLLM loads
    them through the plugin), registered in a registry folder."""
    from moe_specialists.models.apply import apply_plan
    from moe_specialists.models.plan import plan_from_kept

    root = tmp_path_factory.mktemp("gateway")
    registry = Registry(root / "registry")
    for name, kept, direction in [("tiny-en-de", [[0, 1, 2, 3, 4, 5], [0, 2, 4, 6]], "en-de"),
                                  ("tiny-de-en", [[1, 3, 5, 7], [0, 1, 2, 3, 4]], "de-en")]:
        out = apply_plan(plan_from_kept(tiny_model_dir, kept), root / name)
        registry.register_dir(name, out, directions=[direction])
    return root / "registry"


def gateway_settings(registry_dir: Path) -> Settings:
    """The registry's two specialists, API keys on, a tiny queue and small limits."""
    return Settings(
        registry_dir=registry_dir,
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        max_queue_per_engine=3,
        max_batch_size=8,
        max_chars_per_text=200,
        max_chars_per_batch=300,
        default_max_tokens=8,
        max_tokens_limit=64,
        api_keys=[KEY],
        cors_origins=["https://example.org"],
        state_dir=registry_dir.parent / "state",
    )


# The reliability gateway: an in-process specialist and a remote one, small limits (a queue of 2 per engine).
LOCAL, REMOTE = "local-en-de", "remote-en-fr"
MAX_CHARS, MAX_BATCH_CHARS, MAX_BATCH, QUEUE, MAX_TOKENS = 200, 300, 4, 2, 8


def reliability_settings(local_path: str, remote_url: str) -> Settings:
    return Settings(
        specialists=[
            SpecialistSpec(name=LOCAL, path=local_path, directions=["en-de"]),
            SpecialistSpec(name=REMOTE, path=remote_url, directions=["en-fr"]),
        ],
        dtype="float32", max_model_len=512, enforce_eager=True,
        max_chars_per_text=MAX_CHARS, max_chars_per_batch=MAX_BATCH_CHARS, max_batch_size=MAX_BATCH,
        max_queue_per_engine=QUEUE, default_max_tokens=4, max_tokens_limit=MAX_TOKENS,
        health_interval_s=1, remote_timeout_s=3, request_timeout_s=60, access_log=False,
        engine_restart_max_delay_s=2,  # the killed backend is reconnected within 2 s of its return
    )


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread (lifespan included)."""

    def __init__(self, app, port: int):
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(120)


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
        # A remote engine is "failed" until its server answers (it is reconnected); an in-process one failed.
        if any(s["state"] == "given_up" or (s["state"] == "failed" and s.get("backend") == "vllm-inprocess")
               for s in body["specialists"].values()):
            pytest.fail(f"an engine failed to start: {body}")
        time.sleep(1)
    pytest.fail(f"engines not ready after {timeout} s: {body}")


def states(client) -> dict[str, dict]:
    return client.get("/readyz").json()["specialists"]


def wait_for(client, predicate, timeout: float, what: str) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        now = states(client)
        if predicate(now):
            return now
        assert time.monotonic() < deadline, f"{what} not within {timeout} s: {json.dumps(now, indent=1)}"
        time.sleep(0.2)


def metric(client, name: str, absent: float | None = 0.0, **labels) -> float | None:
    """The value of sample ``name`` with exactly these labels on /metrics (``absent`` when there is none)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return absent


def flip_last_byte(path: Path) -> bytes:
    """Tamper with a file (its last byte XOR 1, size and name unchanged); returns the original bytes."""
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
    return original


class VllmServer:
    """A real vLLM OpenAI server (what ``vllm serve`` runs: its console script does not exist in the CPU
    build, so it is started by module) on a fixed port, killed and restarted at will."""

    def __init__(self, model_dir: Path, log: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32", "--max-model-len", "512",
            "--enforce-eager", "--max-num-seqs", "8", *args,
        ]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def wait_up(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server is not up after {timeout} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the server and its engine core (its whole process group)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@contextlib.contextmanager
def serve_command(args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> Iterator[str]:
    """`moe-specialists serve ARGS --port P` as users start it (the console script of this environment), in its
    own process group; yields its URL once /readyz says ready (fails with the log's tail otherwise) and kills
    the group on exit."""
    port = free_port()
    cli = Path(sys.executable).parent / "moe-specialists"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(cli), "serve", *args, "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).json()["status"] == "ready":
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
