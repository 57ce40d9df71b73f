"""Memory probes of a vLLM worker, on plain modules (the real engine is measured in the gateway's metrics test,
tests/deploy/test_dashboards_prometheus.py)."""

from __future__ import annotations

import torch
from torch import nn

from moe_specialists.models.vllm_worker import storage_bytes, weight_bytes


def test_storage_bytes_counts_a_shared_buffer_once():
    kv = torch.zeros(2, 4, 8, dtype=torch.bfloat16)  # 128 bytes
    views = [kv[0], kv[1], kv.view(-1)]
    assert storage_bytes(views) == 2 * 4 * 8 * 2
    assert storage_bytes([*views, torch.zeros(3, dtype=torch.float32)]) == 128 + 12
    assert storage_bytes([]) == 0


def test_weight_bytes_parameters_packed_linears_and_buffers():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, bias=False)).to(torch.bfloat16)
    model.register_buffer("rope", torch.zeros(5, dtype=torch.float32))
    packed = model[1]  # as vLLM's CPU backend leaves a repacked dense linear: an empty weight parameter
    packed.weight = nn.Parameter(torch.empty(0, dtype=torch.bfloat16))
    packed.cpu_linear, packed.output_size, packed.input_size, packed.params_dtype = object(), 2, 3, torch.bfloat16
    got = weight_bytes(model)
    assert got["packed_linear_bytes"] == 2 * 3 * 2
    assert got["parameter_bytes"] == (4 * 3 + 3) * 2 + 2 * 3 * 2
    assert got["buffer_bytes"] == 5 * 4
