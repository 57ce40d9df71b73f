"""``serve``: run the gateway with uvicorn (the ``moe-specialists serve`` command calls it).

Specialists come from ``--specialist name=path:directions`` options, a registry folder, or MOE_* settings.
With none of these it serves the bundled tiny translator on the CPU (or, while the bundled weights are not
there, a tiny RANDOM demo model built in a cache folder: it answers with garbage).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from service.settings import Settings, SpecialistSpec
from service.tiny_model import TINY_MODEL_NOTE, build_tiny_moe

log = logging.getLogger("service.cli")

BUNDLED_LANGUAGES = ["en", "de", "fr", "cs", "ru", "es", "zh", "ja"]
DEMO_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moe-specialists" / "tiny-random"


def _bundled_dir() -> Path | None:
    try:
        from models.tiny_translator import BUNDLED_MODEL_DIR
    except ImportError:
        return None
    folder = Path(BUNDLED_MODEL_DIR)
    has_weights = any(folder.glob("*.safetensors"))
    return folder if (folder / "config.json").exists() and has_weights else None


def default_specialists() -> list[SpecialistSpec]:
    """The bundled tiny translator as one multilingual model; else the labelled random demo model."""
    bundled = _bundled_dir()
    if bundled is not None:
        return [SpecialistSpec(name="tiny-translator", path=str(bundled), languages=BUNDLED_LANGUAGES)]
    log.warning("no bundled translator weights yet: serving a %s", TINY_MODEL_NOTE)
    path = build_tiny_moe(DEMO_CACHE)
    return [SpecialistSpec(name="tiny-random-demo", path=str(path), languages=["en", "de", "fr"])]


def serve(
    specialists: list[str] | None = None,
    registry: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    api_keys: list[str] | None = None,
    **overrides: Any,
) -> None:
    """Serve the gateway until interrupted. ``specialists``: ``name=path:directions`` options (see
    ``SpecialistSpec.parse_option``); ``overrides``: any other ``Settings`` field. MOE_* variables apply too."""
    import uvicorn

    from service.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fields: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if specialists:
        fields["specialists"] = [SpecialistSpec.parse_option(option) for option in specialists]
    if registry is not None:
        fields["registry_dir"] = registry
    if host is not None:
        fields["host"] = host
    if port is not None:
        fields["port"] = port
    if api_keys:
        fields["api_keys"] = api_keys
    settings = Settings(**fields)
    if not settings.specialists and settings.registry_dir is None:
        # Zero configuration: a CPU demo. Small KV cache, no torch.compile (start-up in seconds).
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        settings = settings.model_copy(
            update={"specialists": default_specialists(), "enforce_eager": True, "max_model_len": 1024}
        )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                access_log=settings.access_log)


if __name__ == "__main__":
    serve()
