"""A real gateway on 127.0.0.1 for the client-library tests: uvicorn in a thread serving one PRUNED
specialist of the tiny random model (in-process vLLM engine, multilingual among a few languages), registered
in a registry so that its weight bytes and bytes saved are real."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from moe_specialists.models.apply import apply_plan
from moe_specialists.models.plan import plan_from_kept
from moe_specialists.models.registry.store import Registry
from moe_specialists.service.app import create_app
from moe_specialists.service.settings import Settings
from tests.service.conftest import ServerThread, free_port, wait_ready

LANGUAGES = ["en", "de", "fr", "es", "zh", "pt"]
SPECIALIST = "tiny-multi"


def pruned_registry(model_dir: Path, root: Path) -> Path:
    registry = Registry(root / "registry")
    out = apply_plan(plan_from_kept(model_dir, [[0, 1, 2, 3, 4, 5], [0, 2, 4, 6]]), root / SPECIALIST)
    registry.register_dir(SPECIALIST, out, languages=LANGUAGES)
    return root / "registry"


@contextlib.contextmanager
def gateway(model_dir: Path, root: Path, **overrides) -> Iterator[tuple[object, str]]:
    """(app, base URL) of a ready gateway (its state, e.g. glossaries, under ``root / "state"``)."""
    settings = Settings(
        registry_dir=pruned_registry(model_dir, root), dtype="float32", max_model_len=512, enforce_eager=True,
        default_max_tokens=8, max_tokens_limit=16, max_queue_per_engine=16, max_batch_size=8, access_log=False,
        **{"state_dir": root / "state", **overrides},
    )
    app = create_app(settings)
    port = free_port()
    with ServerThread(app, port):
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as c:
            wait_ready(c)
        yield app, url
