"""What a vLLM engine holds in memory, measured inside its worker process.

``EngineMemoryProbe`` is a vLLM worker extension (``worker_extension_cls=PROBE``):
``llm.collective_rpc("engine_memory")`` returns one dict per worker. The gateway exports it as metrics; the
benchmarks compare it across specialists.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PROBE = "moe_specialists.models.vllm_worker.EngineMemoryProbe"


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, list | tuple):
        return [t for item in x for t in _tensors(item)]
    return []


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one buffer are counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Weight memory of a loaded vLLM model: parameter bytes, plus the dense linears that vLLM's CPU backend
    repacked into oneDNN handles (their parameter is then empty: counted as rows x cols x dtype size), and
    buffers apart (RoPE caches: they do not shrink with pruning)."""
    params = {id(t): t for t in model.parameters()}
    buffers = {id(t): t for t in model.buffers() if id(t) not in params}
    packed = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if hasattr(m, "cpu_linear") and isinstance(w, torch.Tensor) and w.numel() == 0:
            rows = getattr(m, "output_size_per_partition", None) or m.output_size
            cols = getattr(m, "input_size_per_partition", None) or m.input_size
            packed += rows * cols * m.params_dtype.itemsize
    return {
        "parameter_bytes": sum(t.numel() * t.element_size() for t in params.values()) + packed,
        "packed_linear_bytes": packed,
        "buffer_bytes": sum(t.numel() * t.element_size() for t in buffers.values()),
    }


class EngineMemoryProbe:
    """Mixed into vLLM's worker class: ``self.model_runner`` is the worker's."""

    def model_weight_bytes(self) -> dict[str, int | None]:
        """``weight_bytes`` of the loaded model, and vLLM's own measurement where it makes one (GPU runners)."""
        runner = self.model_runner  # type: ignore[attr-defined]
        usage = getattr(runner, "model_memory_usage", None)
        return {**weight_bytes(runner.get_model()), "model_memory_usage": int(usage) if usage else None}

    def engine_memory(self) -> dict[str, int]:
        """weights (parameters + buffers), kv_cache (the allocated cache tensors) and, on a GPU, the bytes the
        worker's CUDA caching allocator holds (``device_reserved``; 0 on the CPU)."""
        runner = self.model_runner  # type: ignore[attr-defined]
        weights = weight_bytes(runner.get_model())
        return {
            "weights": weights["parameter_bytes"] + weights["buffer_bytes"],
            "kv_cache": storage_bytes(_tensors(getattr(runner, "kv_caches", []))),
            "device_reserved": torch.cuda.memory_reserved() if torch.cuda.is_available() else 0,
        }
