"""What the registry records of a specialist: its name, the ``SpecialistEntry`` schema, and entries built from a
specialist folder (family and experts from config.json, parameters and bytes from the safetensors headers, a
sha256 per file).

Names are lowercase ASCII (``NAME_PATTERN``): no separators, no leading dot, no look-alike letters, at most 64
characters, so ``entries/<name>.json`` can never leave the registry.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from moe_specialists.models.checkpoint import header_entries, read_config, weight_totals
from moe_specialists.models.file_hashes import file_sha256
from moe_specialists.models.plan import Plan
from moe_specialists.models.registry.errors import ChecksumError, InvalidNameError

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"  # no slashes, no '..' traversal, no leading dot
NAME_RE = re.compile(NAME_PATTERN)
ENTRY_FILE = "specialist.json"  # the entry as it travels to the hub beside the weights
_NO_CONFIG = "a specialist folder holds config.json + weights"


class Quality(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str  # "chrF", "BLEU", ...
    direction: str  # "en-de"
    score: float
    split: str = "devtest"
    num_sentences: int = 0


class SpecialistEntry(BaseModel):
    """One registered specialist (or a base model entry: ``plan`` is None and nothing is saved)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    base: str  # hub id or local path of the base model
    path: str  # local directory of the weights (materialised or loaded)
    family: str  # model_type: "qwen3_moe", "gpt_oss"
    plan: str | None = None  # path of plan.json (None for a base model)
    directions: list[str] = []  # served directions "en-de"; empty with languages = multilingual
    languages: list[str] = []  # a multilingual specialist serves every pair among these
    experts_per_layer: list[int] = []
    base_experts_per_layer: list[int] = []  # of the base model: experts kept / total = sum(above) / sum(this)
    parameters: int = 0
    weight_bytes: int = 0
    base_weight_bytes: int = 0
    quality: list[Quality] = []
    checksums: dict[str, str] = {}  # file name -> sha256
    created_at: datetime | None = None
    plan_hash: str | None = None  # cache key of a materialised specialist (``materialise.plan_hash``)
    source: str | None = None  # where the weights came from: "local", "materialised", "hub:<repo>@<rev>"

    @property
    def bytes_saved(self) -> int:
        return max(self.base_weight_bytes - self.weight_bytes, 0)


def validate_name(name: str) -> str:
    """``name`` if it is a valid specialist name, else InvalidNameError saying what is accepted."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid specialist name {name!r}: use 1-64 characters from a-z 0-9 . _ -, starting with a "
            "letter or digit (no slashes, no leading dot, ASCII only)"
        )
    return name


# ---------------------------------------------------------------- checksums


def _files(folder: Path) -> list[Path]:
    """Regular files under ``folder`` (recursively), skipping hidden files and folders (hub caches, temps)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and rel.name != ENTRY_FILE:
            out.append(p)
    return out


def checksums(folder: str | Path) -> dict[str, str]:
    """sha256 of every file of a specialist folder, keyed by its path relative to the folder."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in _files(folder)}


def verify_checksums(folder: str | Path, expected: dict[str, str]) -> None:
    """ChecksumError naming every missing or changed file."""
    folder = Path(folder)
    bad = [f for f, h in expected.items() if not (folder / f).is_file() or file_sha256(folder / f) != h]
    if bad:
        raise ChecksumError(f"{folder}: missing or changed files against the registered checksums: {bad}")


# ---------------------------------------------------------------- entries from folders


def weight_stats(folder: str | Path) -> tuple[int, int]:
    """(parameters, weight bytes) of a checkpoint from its safetensors headers alone (no tensor is read):
    ``checkpoint.weight_totals`` of its tensors. A plan view (the base's shards linked) counts only its kept
    experts, as its sliced copy would (``plan_loading.kept_weight_stats``)."""
    config = read_config(Path(folder), _NO_CONFIG)
    if "plan_kept_experts" in config:
        from moe_specialists.models.plan_loading import (  # torch: only for views
            kept_weight_stats,
            view_kept,
            view_substitutes,
        )

        return kept_weight_stats(Path(folder), view_kept(config), view_substitutes(config))
    return weight_totals(header_entries(Path(folder)))


def _experts_per_layer(config: dict[str, Any]) -> list[int]:
    from moe_specialists.models.adapters import ADAPTERS, EXPERTS_PER_LAYER_KEY, adapter_for  # torch: lazily

    if config.get("model_type") in ADAPTERS:
        return adapter_for(config).experts_per_layer(config)
    return [int(c) for c in config.get(EXPERTS_PER_LAYER_KEY) or []]


def entry_from_dir(
    name: str,
    path: str | Path,
    base: str | Path | None = None,
    plan: str | Path | None = None,
    directions: list[str] | None = None,
    languages: list[str] | None = None,
    quality: list[Quality] | None = None,
    with_checksums: bool = True,
    **extra: Any,
) -> SpecialistEntry:
    """Entry of a specialist folder (config.json + safetensors): family and experts per layer from the
    config, parameters and weight bytes from the safetensors headers (no tensor loaded), sha256 of every file.
    ``plan`` defaults to the folder's plan.json (``apply_plan`` writes one) and ``base`` to the plan's base.
    Base weight bytes: measured when ``base`` is a local folder, else the plan's record of them. No base and
    no plan: the folder is a base model (nothing saved)."""
    validate_name(name)
    folder = Path(path).resolve()
    config = read_config(folder, _NO_CONFIG)
    params, nbytes = weight_stats(folder)
    if plan is None and (folder / "plan.json").is_file():
        plan = folder / "plan.json"
    base_bytes, base_experts = 0, _experts_per_layer(config)
    if plan is not None:
        recorded = Plan.load(plan).base
        base = recorded.id if base is None else base
        base_bytes, base_experts = recorded.weight_bytes, recorded.experts_per_layer
    if base is None:
        base, base_bytes = folder, nbytes
    elif Path(base).is_dir():
        base = Path(base).resolve()
        base_bytes = weight_stats(base)[1]
    return SpecialistEntry(
        name=name,
        base=str(base),
        path=str(folder),
        family=str(config.get("model_type", "unknown")),
        plan=None if plan is None else str(Path(plan).resolve()),
        directions=list(directions or []),
        languages=list(languages or []),
        experts_per_layer=_experts_per_layer(config),
        base_experts_per_layer=base_experts,
        parameters=params,
        weight_bytes=nbytes,
        base_weight_bytes=base_bytes,
        quality=list(quality or []),
        checksums=checksums(folder) if with_checksums else {},
        created_at=datetime.now(UTC),
        **extra,
    )
