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
