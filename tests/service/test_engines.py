"""Engine helpers that need no engine: the scheduler gauges read from a vLLM server's /metrics."""

from __future__ import annotations

import pytest

from moe_specialists.service.engines import scheduler_gauges

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
    with pytest.raises(ValueError):
        scheduler_gauges("this is { not prometheus", "en-de")
