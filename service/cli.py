"""``serve``: run the gateway with uvicorn (``serve_command`` is ``moe-specialists serve``).

Specialists come from ``--specialist name=path:directions`` options, a registry folder (``--registry`` or
``MOE_REGISTRY_DIR``), or MOE_* settings. With none of these it serves the default registry (the one
``registry ...`` and ``prune --register`` fill: ``models.registry.store.default_registry_dir``) when it holds
entries, else the specialists of the bundled tiny translator on the CPU, materialised from the bundled plans
into a registry under ``~/.cache/moe-specialists/bundled`` (``BUNDLED_REGISTRY_ENV`` moves it); it logs which.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from moe_specialists.models.registry.store import Registry, default_registry_dir
from moe_specialists.service.settings import Settings, SpecialistSpec, load_settings

BUNDLED_REGISTRY_ENV = "MOE_BUNDLED_REGISTRY"
log = logging.getLogger(__name__)


def bundled_registry_dir() -> Path:
    """Materialise the bundled specialists (cached) and return their registry folder."""
    from moe_specialists.models.tiny_translator import bundled_registry

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moe-specialists" / "bundled"
    return bundled_registry(os.environ.get(BUNDLED_REGISTRY_ENV, cache)).root


def zero_configuration(settings: Settings) -> Settings:
    """A CPU demo: the bundled specialists, a small KV cache, no torch.compile (start-up in seconds)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return settings.model_copy(update={"registry_dir": bundled_registry_dir(), "enforce_eager": True})


def what_to_serve(settings: Settings) -> Settings:
    """``settings`` when they name specialists or a registry; else the default registry when it holds entries,
    else the bundled demo (``zero_configuration``). Logs which."""
    if settings.specialists or settings.registry_dir is not None:
        return settings
    root = default_registry_dir()
    names = Registry(root).names()
    if names:
        log.info("serving the default registry %s: %s", root, ", ".join(names))
        return settings.model_copy(update={"registry_dir": root})
    log.info("no specialists named and the default registry %s is empty: serving the bundled demo", root)
    return zero_configuration(settings)


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
    from moe_specialists.service.app import create_app
    from moe_specialists.service.shutdown import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per call to a remote engine otherwise
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
    settings = what_to_serve(load_settings(**fields))
    run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
        access_log=settings.access_log)


def serve_command(
    specialist: Annotated[
        list[str] | None,
        typer.Option(
            "--specialist",
            "-s",
            help="name=path:directions, repeatable. path: a folder, hub id or http(s) URL of a vLLM server; "
            "directions: en-de,de-en (those), en,de,fr (every pair among them) or base. "
            "Example: -s en-de=/models/en-de:en-de,de-en",
        ),
    ] = None,
    registry: Annotated[
        Path | None,
        typer.Option(help="Serve every specialist registered in this registry folder (default, when no "
                     "specialist is named: $MOE_REGISTRY_DIR or ~/.cache/moe-specialists/registry if it holds "
                     "entries, else the bundled demo)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1, MOE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000, MOE_PORT).")] = None,
    api_key: Annotated[
        list[str] | None, typer.Option("--api-key", help="Accepted API key, repeatable (default: none needed).")
    ] = None,
) -> None:
    """Serve translation specialists over HTTP (FastAPI + vLLM). With no specialist and no registry it serves
    the default registry, or when that is empty pruned specialists of the bundled tiny translator on the CPU.
    MOE_* environment variables set the rest (see service/settings.py)."""
    from pydantic import ValidationError

    try:
        serve(specialists=specialist, registry=registry, host=host, port=port, api_keys=api_key)
    except (ValueError, ValidationError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    serve()
