"""Remote backend: a real vLLM OpenAI server (what ``vllm serve`` runs) on 127.0.0.1 (a free port) behind
the gateway.
Two specialists share the server: one renders prompts here (/v1/completions), one has no tokenizer and goes
through the server's chat template (/v1/chat/completions); both must give the same greedy text. Then the
server is killed: its specialists turn unready and answer 503 quickly."""

from __future__ import annotations

import signal
import time

import pytest
from fastapi.testclient import TestClient

from moe_specialists.service.app import create_app
from moe_specialists.service.settings import Settings, SpecialistSpec
from tests.service.conftest import VllmServer, wait_ready

pytestmark = pytest.mark.slow  # make test-fast skips it: remote vLLM servers end to end


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, tmp_path_factory):
    server = VllmServer(tiny_model_dir, tmp_path_factory.mktemp("vllm-serve") / "server.log",
                        "--served-model-name", "tiny-remote")
    server.start()
    try:
        server.wait_up()
        yield server
    finally:
        server.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def client(vllm_server):
    url = vllm_server.url
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
    vllm_server.kill(signal.SIGTERM)
    deadline = time.monotonic() + 15
    while client.get("/readyz").status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["specialists"]["remote-en-fr"]["state"] == "failed"
    start = time.monotonic()
    r = client.post("/v1/translate", json={"text": "Hello", "source": "en", "target": "fr"})
    assert r.status_code == 503 and r.headers["Retry-After"], r.text
    assert time.monotonic() - start < 2
