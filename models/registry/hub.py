"""Specialists on the Hugging Face hub: ``push`` uploads a registered specialist's folder and its entry (as
``specialist.json``), ``pull`` downloads one into ``<root>/hub/<name>/``, checks it, and registers it.
``api``: a ``huggingface_hub.HfApi`` (default) or a stand-in with the same four methods."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from moe_specialists.models.registry.entries import ENTRY_FILE, SpecialistEntry, entry_from_dir, verify_checksums
from moe_specialists.models.registry.store import Registry


def _api(api: Any) -> Any:
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    return api


def push(registry: Registry, name: str, repo_id: str, api: Any = None, private: bool | None = None) -> str:
    """Upload specialist ``name`` and its entry to the hub repo ``repo_id``; the commit's URL or id."""
    entry = registry.get(name)
    api = _api(api)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=entry.path,
        ignore_patterns=[".*", "**/.*", ENTRY_FILE],
        commit_message=f"specialist {name}: weights",
    )
    info = api.upload_file(
        path_or_fileobj=entry.model_dump_json(indent=2).encode(),
        path_in_repo=ENTRY_FILE,
        repo_id=repo_id,
        commit_message=f"specialist {name}: registry entry",
    )
    return str(getattr(info, "commit_url", None) or getattr(info, "oid", None) or info)


def pull(
    registry: Registry,
    repo_id: str,
    name: str,
    revision: str | None = None,
    api: Any = None,
    overwrite: bool = False,
    **kw: Any,
) -> SpecialistEntry:
    """Download ``repo_id`` (at ``revision``) into ``<root>/hub/<name>/`` and register it as ``name``.
    A repo pushed by ``push`` carries its entry (metadata, quality, checksums, verified here); any other
    repo is described from its files, with ``kw`` passed to ``entry_from_dir`` (base, directions, ...)."""
    registry.refuse_duplicate(name, overwrite)
    api = _api(api)
    hub = registry.root / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    local, tmp = hub / name, Path(tempfile.mkdtemp(prefix=f".tmp-{name}.", dir=hub))
    source = f"hub:{repo_id}@{revision or 'main'}"
    try:  # download beside, check, then swap in: a failed pull leaves an earlier one intact
        api.snapshot_download(repo_id=repo_id, revision=revision, local_dir=tmp)
        shipped = tmp / ENTRY_FILE
        remote = SpecialistEntry.model_validate_json(shipped.read_bytes()) if shipped.is_file() else None
        if remote is not None:
            verify_checksums(tmp, remote.checksums)
        shutil.rmtree(local, ignore_errors=True)
        os.replace(tmp, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if remote is not None:
        plan = local / "plan.json"
        update = {"name": name, "path": str(local.resolve()), "source": source}
        update["plan"] = str(plan.resolve()) if plan.is_file() else None
        entry = remote.model_copy(update=update)
    else:
        kw.setdefault("base", repo_id)
        entry = entry_from_dir(name, local, source=source, **kw)
    return registry.add(entry, overwrite=overwrite)
