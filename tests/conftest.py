import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FLORES = Path(__file__).resolve().parents[2] / "shared" / "data" / "flores200"


@pytest.fixture(scope="session")
def flores_dir() -> Path:
    if not (FLORES / "dev" / "en.txt").is_file():
        pytest.fail(f"FLORES data not found at {FLORES} (expected ../shared/data beside the checkout)")
    return FLORES


@pytest.fixture
def cpu_without_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine made to answer "no CUDA GPU, a CPU without AMX tiles", where vLLM has no MXFP4 kernel (the
    hardware probes are the only fake: the same on every machine)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
