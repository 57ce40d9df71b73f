import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The parallel sample shipped with the project (``--data sample``), as a FLORES-style folder."""
    from moe_specialists.pruning.data import SAMPLE_DIR

    return SAMPLE_DIR


@pytest.fixture
def cpu_without_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine made to answer "no CUDA GPU, a CPU without AMX tiles", where vLLM has no MXFP4 kernel (the
    hardware probes are the only fake: the same on every machine)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
