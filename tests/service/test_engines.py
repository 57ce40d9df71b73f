"""Engine helpers that need no engine: the scheduler gauges read from a vLLM server's /metrics, the stat
logger an in-process engine gives vLLM (built by vLLM's own ``StatLoggerManager``, as ``AsyncLLM`` does), and
the refusal of a specialist vLLM cannot run on this machine, the ending of an engine core's processes, and the
remote engine's reading of a stream that ends with or without ``[DONE]`` (against a loopback stand-in)."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from fastapi.testclient import TestClient

from moe_specialists.service.app import create_app
from moe_specialists.service.engines.local import end_processes, engine_config, process_tree, scheduler_logger
from moe_specialists.service.engines.remote import scheduler_gauges
from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.settings import Settings, SpecialistSpec
from tests.released import save_released_gpt_oss
from tests.service.conftest import wait_for

# The shape of vLLM's exposition (names and labels as vLLM 0.32 writes them), two engines of one model and
# another model on the same server.
EXPOSITION = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="en-de"} 3.0
vllm:num_requests_running{engine="1",model_name="en-de"} 2.0
vllm:num_requests_running{engine="0",model_name="other"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="en-de"} 1.0
vllm:num_requests_waiting{engine="1",model_name="en-de"} 0.0
# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="en-de",reason="capacity"} 4.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="en-de"} 9.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="en-de"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="en-de"} 0.5
vllm:kv_cache_usage_perc{engine="0",model_name="other"} 0.9
"""


def test_scheduler_gauges_of_one_model():
    assert scheduler_gauges(EXPOSITION, "en-de") == (3 + 2, 1 + 0, 0.5)
    assert scheduler_gauges(EXPOSITION, "other") == (7, 0, 0.9)
    assert scheduler_gauges(EXPOSITION, "absent") == (0, 0, 0.0)
    assert scheduler_gauges("", "en-de") == (0, 0, 0.0)


def test_scheduler_gauges_refuse_garbage():
    """Only the three gauges' lines are parsed (by prometheus_client), so garbage there is refused, and text
    without them (not a vLLM server's metrics) reads as nothing running."""
    with pytest.raises(ValueError):
        scheduler_gauges('vllm:num_requests_running{model_name="en-de" this is not prometheus', "en-de")
    assert scheduler_gauges("this is { not prometheus", "en-de") == (0, 0, 0.0)


def _vllm_collectors() -> list[str]:
    from prometheus_client import REGISTRY

    return sorted(n for c in list(REGISTRY._collector_to_names) for n in REGISTRY._collector_to_names[c]
                  if n.startswith("vllm:"))


def test_scheduler_logger_is_the_only_stat_logger_and_registers_nothing_global():
    """vLLM adds its own Prometheus logger unless a custom one is one; that one (re)registers ``vllm:*`` in the
    process-global registry and raced (DuplicateTimeseries) when two in-process engines started together."""
    from vllm.v1.metrics.loggers import StatLoggerManager
    from vllm.v1.metrics.prometheus import unregister_vllm_metrics
    from vllm.v1.metrics.stats import SchedulerStats

    unregister_vllm_metrics()
    metrics = GatewayMetrics()

    def build(name: str) -> StatLoggerManager:
        return StatLoggerManager(None, custom_stat_loggers=[scheduler_logger(metrics, name)],
                                 enable_default_loggers=False)

    with ThreadPoolExecutor(8) as pool:  # engines start in threads, several at once
        managers = list(pool.map(build, [f"s{i}" for i in range(32)]))
    assert [type(m).__name__ for m in managers[0].stat_loggers] == ["SchedulerToMetrics"]
    assert _vllm_collectors() == []

    managers[3].record(SchedulerStats(num_running_reqs=2, num_waiting_reqs=5, kv_cache_usage=0.25), None)
    managers[3].log()
    managers[3].log_engine_initialized()
    managers[3].record_sleep_state(1, 0)
    managers[3].record_admission_rejection("full")
    sample = metrics.registry.get_sample_value
    assert sample("moe_engine_requests", {"specialist": "s3", "state": "running"}) == 2
    assert sample("moe_engine_requests", {"specialist": "s3", "state": "waiting"}) == 5
    assert sample("moe_engine_kv_cache_usage_ratio", {"specialist": "s3"}) == 0.25
    assert sample("moe_engine_kv_cache_usage_ratio", {"specialist": "s4"}) is None


def test_an_mxfp4_specialist_on_a_cpu_without_amx_is_given_up_at_once_with_the_reason(tmp_path, cpu_without_amx):
    """The gateway's own vLLM engine on a CPU without AMX: the specialist is given up saying why, before vLLM
    loads anything and without a restart (none could heal it), and the gateway still answers."""
    path = save_released_gpt_oss(tmp_path / "gpt-oss", layers=2, experts=4, top_k=2, shards=1)
    settings = Settings(specialists=[SpecialistSpec(name="gpt-oss", path=str(path), directions=["en-de"])],
                        max_model_len=256, health_interval_s=0.2, engine_max_restarts=5)
    with TestClient(create_app(settings)) as client:
        now = wait_for(client, lambda s: s["gpt-oss"]["state"] == "given_up", 60, "given up")
        assert "its experts are MXFP4" in now["gpt-oss"]["error"] and "AMX tiles" in now["gpt-oss"]["error"]
        assert now["gpt-oss"]["restarts"] == 0
        r = client.post("/v1/translate", json={"text": "Hello", "source": "en", "target": "de"})
        assert r.status_code == 503 and "AMX" in r.text, r.text


def test_the_context_is_the_models_own_and_the_setting_only_caps_it():
    """The bundled translator supports 1024 tokens: no setting -> 1024, 2048 -> 1024 (never more), 512 -> 512."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR

    def context(cap: int | None) -> int:
        args = AsyncEngineArgs(model=str(BUNDLED_MODEL_DIR), enforce_eager=True)
        return engine_config(args, cap).model_config.max_model_len

    assert [context(cap) for cap in (None, 2048, 512)] == [1024, 1024, 512]


def test_a_configuration_vllm_refuses_is_given_up_at_once():
    """vLLM's own argument checks refuse it before any engine process starts: restarting would fail the same
    way, so the specialist is given up on the first failure with vLLM's reason (other specialists unaffected)."""
    from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR

    spec = SpecialistSpec(name="tiny", path=str(BUNDLED_MODEL_DIR), directions=["en-de"])
    settings = Settings(specialists=[spec], dtype="float8", health_interval_s=0.2, engine_max_restarts=5,
                        engine_restart_initial_delay_s=0.1)
    with TestClient(create_app(settings)) as client:
        now = wait_for(client, lambda s: s["tiny"]["state"] == "given_up", 120, "given up")
        assert now["tiny"]["restarts"] == 0
        assert "vLLM refused the configuration" in now["tiny"]["error"] and "dtype" in now["tiny"]["error"]
        r = client.post("/v1/translate", json={"text": "Hello", "source": "en", "target": "de"})
        assert r.status_code == 503 and "dtype" in r.text, r.text


def test_end_processes_kills_a_tree_whose_root_is_gone_and_frozen_children():
    """A stand-in engine core (a shell) with two children: the tree noted, the children frozen (as a hung
    worker), the root killed; ending what was noted leaves none of them, the orphans included."""
    root = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(psutil.Process(root.pid).children()) < 2:
            assert time.monotonic() < deadline, "the shell did not start its children"
            time.sleep(0.05)
        tree = process_tree([root.pid, 2**22 + 1])  # a pid that does not exist is left out
        assert len(tree) == 3, tree
        for child in tree[1:]:
            child.suspend()
        root.kill()
        root.wait(10)
        assert all(child.is_running() for child in tree[1:])  # orphans: nothing else ends them
        assert end_processes(tree, timeout=10) == []
        assert not any(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE for proc in tree)
    finally:
        root.kill()
        root.wait(10)


@pytest.mark.parametrize("done", [True, False], ids=["done", "cut"])
def test_a_remote_stream_without_done_is_not_finished(done):
    """A stand-in for ``vllm serve`` on loopback (aiohttp) streams two chat deltas, then ``[DONE]`` or nothing
    (a server that went away mid-stream): only with ``[DONE]`` is the last generation finished."""
    import asyncio
    import json

    from aiohttp import web

    from moe_specialists.service.engines.base import GenerationParams
    from moe_specialists.service.engines.remote import RemoteVllmEngine

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece, finish in (("Hal", None), ("lo", "stop" if done else None)):
            event = {"choices": [{"delta": {"content": piece}, "finish_reason": finish}]}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        if done:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def run() -> list:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        spec = SpecialistSpec(name="en-de", path=f"http://127.0.0.1:{port}", directions=["en-de"])
        engine = RemoteVllmEngine(spec, Settings(specialists=[spec]), GatewayMetrics())
        engine.model = "en-de"
        try:
            return [g async for g in engine.stream("en", "de", "Hello", GenerationParams(max_tokens=8))]
        finally:
            await engine.close()
            await runner.cleanup()

    gens = asyncio.run(run())
    assert gens[-1].text == "Hallo" and gens[-1].finished is done
    assert gens[-1].finish_reason == ("stop" if done else None)
