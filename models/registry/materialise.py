"""Specialists materialised from base + plan: ``apply_plan`` into ``<root>/cache/<plan_hash>/``, built once per
plan and base, then registered (every entry of that plan shares the folder)."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moe_specialists.models.registry.entries import SpecialistEntry, entry_from_dir
from moe_specialists.models.registry.store import Registry

Apply = Callable[[Path, str | Path | None, Path], Any]  # (plan, base, out_dir): writes the specialist


def plan_hash(plan: str | Path, base: str | Path | None = None) -> str:
    """Cache key of a materialised specialist: sha256 of the plan file's bytes and of the base's identity
    (resolved path when local, else the hub id; None = the plan's own base), 16 hex digits."""
    ident = "" if base is None else str(Path(base).resolve()) if Path(base).exists() else str(base)
    h = hashlib.sha256(Path(plan).read_bytes())
    h.update(b"\0" + ident.encode())
    return h.hexdigest()[:16]


def default_apply(plan: Path, base: str | Path | None, out_dir: Path) -> Any:
    """``models.apply.apply_plan`` (imported only when a specialist is built)."""
    from moe_specialists.models.apply import apply_plan

    return apply_plan(plan, out_dir, base=base)


def materialise(
    registry: Registry,
    name: str,
    plan: str | Path,
    base: str | Path | None = None,
    overwrite: bool = False,
    apply: Apply = default_apply,
    **kw: Any,
) -> SpecialistEntry:
    """Build the specialist of ``plan`` over ``base`` (default: the plan's base) with ``apply`` into
    ``<root>/cache/<plan_hash>/`` unless it is already there, then register it as ``name`` (``kw``: fields of
    ``entry_from_dir``). apply_plan writes a temp folder renamed into place, so a half-built specialist is
    never reused; a per-hash lock stops two processes from building the same one twice."""
    registry.refuse_duplicate(name, overwrite)
    plan = Path(plan).resolve()
    key = plan_hash(plan, base)
    cache = registry.root / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / key
    with open(cache / f".{key}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "config.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            apply(plan, base, out)
    entry = entry_from_dir(name, out, base=base, plan=plan, plan_hash=key, source="materialised", **kw)
    return registry.add(entry, overwrite=overwrite)
