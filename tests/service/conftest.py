"""Shared fixtures: a tiny random Qwen3-MoE checkpoint (built locally, no download) and app helpers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
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
        # A remote engine is "failed" until its server answers (it is reconnected); an in-process one failed.
        if any(s["state"] == "given_up" or (s["state"] == "failed" and s.get("backend") == "vllm-inprocess")
               for s in body["specialists"].values()):
            pytest.fail(f"an engine failed to start: {body}")
        time.sleep(1)
    pytest.fail(f"engines not ready after {timeout} s: {body}")


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
