"""Every PromQL expression of every Grafana dashboard, run against a REAL Prometheus (Debian's ``prometheus``)
that scraped a running gateway and a running vLLM OpenAI server on 127.0.0.1 after some traffic: each returns
data (a non-empty result with a number in it).

The stack is the scale-out topology of deploy/k8s, on loopback: the gateway (``python -m moe_specialists.service.cli``,
configured by MOE_* variables as in the container) routes en-de to a remote vLLM server (CPU build) of a tiny
random Qwen3-MoE, de-en to a pruned specialist of it in an in-process engine (from a registry), and a third
specialist points at a port nobody listens on (engine down: rejections, 503). Prometheus scrapes the gateway
and the vLLM server every second. Two vLLM engines for the whole module (about 30-90 s to start here).

The same scrapes check that the gateway's metrics carry the right values (hand-computed from the traffic sent
and the specialists served).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.conftest import ROOT, dashboard_queries, free_port, need_tool, substitute, variable_queries

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 240
BASE_BYTES, EN_DE_BYTES, DEAD_BYTES = 4_000_000, 1_000_000, 2_500_000
DE_EN_KEPT = [[0, 1, 2, 3, 4, 5], [0, 2, 4, 6]]  # 10 of 2 x 8 experts


@contextlib.contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A subprocess in its own process group, logging to ``log``; the group is stopped on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def wait_for(what: str, check, procs: list[tuple[subprocess.Popen, Path]], timeout: float = START_TIMEOUT_S):
    """Poll ``check()`` until it returns something truthy; fail early (with the log) if a process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, log in procs:
            if proc.poll() is not None:
                pytest.fail(f"{what}: {proc.args[:4]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            if result := check():
                return result
        time.sleep(1)
    logs = "\n".join(f"--- {log}\n{log.read_text()[-2000:]}" for _, log in procs)
    pytest.fail(f"{what}: not within {timeout} s\n{logs}")


ROUNDS = 2
EN_DE_OK, DE_EN_OK = 5, 2  # successful texts per round: remote en-de (4 plain, 1 streamed), in-process de-en


def send_traffic(gateway: str) -> None:
    """Successes (plain and streamed, both engines), a 400, and a 503 from the specialist whose server is down."""
    with httpx.Client(base_url=gateway, timeout=60) as c:
        for i in range(4):
            r = c.post(
                "/v1/translate", json={"text": f"Hello world {i}", "source": "en", "target": "de", "max_tokens": 8}
            )
            assert r.status_code == 200, r.text
        with c.stream(
            "POST",
            "/v1/translate",
            json={"text": "The cat sits on the mat.", "source": "en", "target": "de", "max_tokens": 8, "stream": True},
        ) as r:
            assert r.status_code == 200
            r.read()
        r = c.post("/v1/translate", json={"text": ["Guten Morgen", "Danke"], "source": "de", "target": "en",
                                          "max_tokens": 4})
        assert r.status_code == 200 and r.headers["X-Specialist"] == "tiny-de-en", r.text
        r = c.post("/v1/translate", json={"text": "x", "source": "en", "target": "xx"})
        assert r.status_code == 400, r.text
        r = c.post("/v1/translate", json={"text": "Hello", "source": "en", "target": "fr", "specialist": "dead-en-fr"})
        assert r.status_code == 503, r.text


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deploy-stack")


@pytest.fixture(scope="module")
def prometheus_url(stack_dir) -> Iterator[str]:
    prometheus = need_tool("prometheus", "Debian package `prometheus`: apt-get install -y prometheus")
    from moe_specialists.models.apply import apply_plan
    from moe_specialists.models.plan import plan_from_kept
    from moe_specialists.models.registry.store import Registry
    from tests.tiny import save_tiny

    tmp = stack_dir
    model = save_tiny("qwen3_moe", tmp / "tiny-qwen3-moe", layers=2, experts=8, top_k=2)
    pruned = apply_plan(plan_from_kept(model, DE_EN_KEPT), tmp / "tiny-de-en")
    Registry(tmp / "registry").register_dir("tiny-de-en", pruned, base=model, directions=["de-en"])
    vllm_port, gateway_port, prom_port, dead_port = free_port(), free_port(), free_port(), free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}

    vllm_cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        "tiny-en-de",
        "--host",
        "127.0.0.1",
        "--port",
        str(vllm_port),
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "8",
        "--enforce-eager",
    ]
    specialists = [
        {
            "name": "tiny-en-de",
            "path": f"http://127.0.0.1:{vllm_port}",
            "directions": ["en-de"],
            "tokenizer": str(model),
            "weight_bytes": EN_DE_BYTES,
            "base_weight_bytes": BASE_BYTES,
        },
        {
            "name": "dead-en-fr",
            "path": f"http://127.0.0.1:{dead_port}",
            "directions": ["en-fr"],
            "weight_bytes": DEAD_BYTES,
            "base_weight_bytes": BASE_BYTES,
        },
    ]
    gateway_env = env | {
        "MOE_HOST": "127.0.0.1",
        "MOE_PORT": str(gateway_port),
        "MOE_SPECIALISTS": json.dumps(specialists),
        "MOE_REGISTRY_DIR": str(tmp / "registry"),
        "MOE_DTYPE": "float32",
        "MOE_MAX_MODEL_LEN": "512",
        "MOE_ENFORCE_EAGER": "true",
        "MOE_HEALTH_INTERVAL_S": "1",
        "MOE_REMOTE_TIMEOUT_S": "2",
        "MOE_READINESS": "any",
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "gateway", "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}]},
            {"job_name": "vllm", "static_configs": [{"targets": [f"127.0.0.1:{vllm_port}"]}]},
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_cmd = [
        prometheus,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        "--log.level=warn",
    ]
    gateway, prom = f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{prom_port}"

    with (
        process(vllm_cmd, tmp / "vllm.log", env) as vllm,
        process([sys.executable, "-m", "moe_specialists.service.cli"], tmp / "gateway.log", gateway_env) as gw,
        process(prom_cmd, tmp / "prometheus.log") as pr,
    ):
        procs = [(vllm, tmp / "vllm.log"), (gw, tmp / "gateway.log"), (pr, tmp / "prometheus.log")]
        def states() -> dict:
            return {k: v["state"] for k, v in httpx.get(f"{gateway}/readyz", timeout=5).json()["specialists"].items()}

        wait_for(
            "gateway ready (remote vLLM server and in-process engine up)",
            lambda: states()["tiny-en-de"] == states()["tiny-de-en"] == "ready",
            procs,
        )
        # Two rounds: a counter or histogram series appears at its first increment, and rate() counts only
        # increases it has seen scraped, so the series must be in Prometheus before the traffic it measures.
        for rounds in range(1, ROUNDS + 1):
            send_traffic(gateway)
            expected = (
                f"count(up == 1) == 2"
                f" and on() sum(moe_gateway_time_to_first_token_seconds_count) >= {rounds}"
                f" and on() sum(moe_gateway_requests_total) >= {(EN_DE_OK + DE_EN_OK) * rounds}"
                f" and on() sum(moe_gateway_rejections_total) >= {rounds}"
                f" and on() sum(vllm:request_success_total) >= {5 * rounds}"
            )
            wait_for(f"Prometheus scraped traffic round {rounds}", lambda q=expected: query(prom, q), procs, timeout=60)
        time.sleep(3)  # a few more scrapes, so rate() has points after the last increase
        yield prom


def query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
    return body["data"]["result"]


@pytest.mark.parametrize(("query_id", "expr"), dashboard_queries(), ids=[q for q, _ in dashboard_queries()])
def test_dashboard_query_returns_data(prometheus_url, query_id, expr):
    promql = substitute(expr)
    result = query(prometheus_url, promql)
    assert result, f"{query_id}: no data for {promql!r}"
    values = [float(sample["value"][1]) for sample in result]
    assert any(math.isfinite(v) for v in values), f"{query_id}: only NaN/Inf for {promql!r}: {result}"


@pytest.mark.parametrize(("var_id", "metric", "label"), variable_queries(), ids=[v for v, _, _ in variable_queries()])
def test_template_variable_has_values(prometheus_url, var_id, metric, label):
    r = httpx.get(f"{prometheus_url}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=10).json()
    assert r["status"] == "success" and r["data"], f"{var_id}: label_values({metric}, {label}) is empty"


def test_memory_savings_values_are_the_configured_ones(prometheus_url, stack_dir):
    """The savings panels show what the specialists' sizes say: saved = base - weights, ratio = saved / base."""
    from moe_specialists.models.registry.store import Registry

    entry = Registry(stack_dir / "registry").get("tiny-de-en")
    saved = {
        s["metric"]["specialist"]: float(s["value"][1]) for s in query(prometheus_url, "moe_specialist_bytes_saved")
    }
    assert saved == {
        "tiny-en-de": BASE_BYTES - EN_DE_BYTES,
        "dead-en-fr": BASE_BYTES - DEAD_BYTES,
        "tiny-de-en": entry.base_weight_bytes - entry.weight_bytes,
    }
    ratio = query(
        prometheus_url,
        'moe_specialist_bytes_saved{specialist="tiny-en-de"}'
        ' / (moe_specialist_base_weight_bytes{specialist="tiny-en-de"} > 0)',
    )
    assert float(ratio[0]["value"][1]) == pytest.approx(0.75)
    ready = {s["metric"]["specialist"]: float(s["value"][1]) for s in query(prometheus_url, "moe_gateway_engine_ready")}
    assert ready == {"tiny-en-de": 1.0, "dead-en-fr": 0.0, "tiny-de-en": 1.0}


def value(prom: str, expr: str) -> float:
    (sample,) = query(prom, expr)
    return float(sample["value"][1])


def test_gateway_metrics_have_the_right_values(prometheus_url, stack_dir):
    """What Prometheus scraped from the gateway, against what was sent and what is served."""
    from moe_specialists.models.registry.store import Registry

    prom = prometheus_url
    for specialist, direction, ok in [("tiny-en-de", "en-de", EN_DE_OK), ("tiny-de-en", "de-en", DE_EN_OK)]:
        sel = f'specialist="{specialist}", direction="{direction}"'
        assert value(prom, f'moe_gateway_requests_total{{{sel}, status="200"}}') == ok * ROUNDS
        assert value(prom, f"moe_gateway_request_latency_seconds_count{{{sel}}}") == ok * ROUNDS
        assert value(prom, f"moe_gateway_inflight_requests{{{sel}}}") == 0  # all answered
        assert value(prom, f"moe_gateway_queued_requests{{{sel}}}") == 0
        assert 0 < value(prom, f"moe_gateway_generated_tokens_total{{{sel}}}") <= 8 * ok * ROUNDS
    assert value(prom, 'moe_gateway_rejections_total{specialist="dead-en-fr", reason="unavailable"}') == ROUNDS
    assert value(prom, 'moe_gateway_queue_limit{specialist="tiny-en-de"}') == 64  # Settings default

    # What the specialists are: the in-process one from its registry entry, the others from MOE_SPECIALISTS.
    entry = Registry(stack_dir / "registry").get("tiny-de-en")
    sel = 'specialist="tiny-de-en"'
    assert value(prom, f"moe_specialist_experts_kept{{{sel}}}") == 10
    assert value(prom, f"moe_specialist_experts_total{{{sel}}}") == 16
    assert value(prom, f"moe_specialist_parameters{{{sel}}}") == entry.parameters
    saved = entry.base_weight_bytes - entry.weight_bytes
    assert value(prom, f"moe_specialist_bytes_saved_ratio{{{sel}}}") == pytest.approx(saved / entry.base_weight_bytes)
    assert value(prom, 'moe_specialist_bytes_saved_ratio{specialist="tiny-en-de"}') == pytest.approx(0.75)

    # Engine memory, measured in the in-process engine's worker: at least the fp32 checkpoint's weights.
    weights = value(prom, f'moe_engine_memory_bytes{{{sel}, kind="weights"}}')
    assert entry.weight_bytes <= weights < entry.weight_bytes + 2**20  # + buffers (RoPE cache)
    assert value(prom, f'moe_engine_memory_bytes{{{sel}, kind="kv_cache"}}') > 0
    for specialist in ("tiny-de-en", "tiny-en-de"):  # in-process scheduler stats; remote: scraped from vLLM
        assert 0 <= value(prom, f'moe_engine_kv_cache_usage_ratio{{specialist="{specialist}"}}') <= 1
        # Every request was answered before these scrapes: the schedulers are empty.
        for state in ("running", "waiting"):
            assert value(prom, f'moe_engine_requests{{specialist="{specialist}", state="{state}"}}') == 0
    assert value(prom, 'process_resident_memory_bytes{job="gateway"}') > 100 * 2**20  # python + torch + vLLM
