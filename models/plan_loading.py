"""Specialists as plans: load a specialist from its BASE checkpoint and its kept-expert lists, without a sliced
copy on disk.

* transformers: ``load_from_plan`` / ``load_from_base`` read only the kept tensors of the base's shards
  (dropped per-expert tensors are never read; stacked expert tensors and routers are read row range by row
  range) into the pruned class, experts renumbered 0..c_l-1 exactly as ``apply`` writes them.
* vLLM: ``view_of_plan`` (cached by the plan's hash; ``plan_view`` does the writing) makes a folder of a few kB:
  the specialist's config.json with the kept lists (``PLAN_KEPT_KEY``), the base's shards, index and
  tokenizer files as symbolic links, and plan.json. The plugin's model classes slice the base's tensors while
  vLLM streams them (``slice_tensor``), so the engine holds the same weights as for the sliced copy (vLLM still
  reads each dropped tensor once while streaming; only the kept rows stay in memory).

Before anything loads, the base's files are checked against the sha256 the plan recorded
(``check_base_files``): a different or missing shard is refused with what differs.

A substitute plan (``Plan.constants``) keeps every router row, the kept experts' first (``router_order``, as
``apply`` writes them), and its constants: in memory for transformers, in the view's ``substitutes.safetensors``
for vLLM (the plugin adds them to the stream).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from moe_specialists.models.adapters import SUBSTITUTED_PER_LAYER_KEY, FamilyAdapter, adapter_for
from moe_specialists.models.apply import check_plan_matches
from moe_specialists.models.checkpoint import (
    INDEX_NAME,
    header_entries,
    read_config,
    read_header,
    resolve_model,
    shard_files,
    weight_totals,
)
from moe_specialists.models.file_hashes import FileHashes
from moe_specialists.models.plan import Plan, router_order, save_constants

PLAN_KEPT_KEY = "plan_kept_experts"  # config.json of a plan view: {"<layer>": [original expert ids]}
VIEW_SUBSTITUTES = "substitutes.safetensors"  # a substitute plan view's constants, ``substitutes_tensor`` names


def slice_tensor(
    adapter: FamilyAdapter, name: str, tensor: torch.Tensor, kept_by_layer: dict[int, list[int]],
    substitute: bool = False,
) -> tuple[str, torch.Tensor] | None:
    """The specialist's (name, tensor) for one base tensor, or None when it belongs to a dropped expert: router
    rows and experts stacked on dim 0 keep rows ``kept`` (a ``substitute`` router: every row, ``router_order``);
    a kept per-expert tensor is renumbered to its position in ``kept``; every other tensor is unchanged
    (``apply`` does the same on the bytes)."""
    role = adapter.tensor_role(name)
    if role is None or role.layer not in kept_by_layer:
        return name, tensor
    kept = kept_by_layer[role.layer]
    if role.kind == "router" and substitute:
        kept = router_order(kept, tensor.shape[0])
    if role.kind in ("router", "packed"):
        return name, tensor.index_select(0, torch.tensor(kept, dtype=torch.long)).contiguous()
    if role.expert not in kept:
        return None
    return adapter.renumber_expert(name, kept.index(role.expert)), tensor


def sliced_stream(
    adapter: FamilyAdapter, weights: Iterable[tuple[str, torch.Tensor]], kept_by_layer: dict[int, list[int]],
    substitute: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """``slice_tensor`` over a stream of base tensors, dropped experts left out."""
    for name, tensor in weights:
        if (sliced := slice_tensor(adapter, name, tensor, kept_by_layer, substitute)) is not None:
            yield sliced


def runs(indices: list[int]) -> list[tuple[int, int]]:
    """Ascending indices as half-open [start, end) runs: [0, 1, 2, 5, 7, 8] -> [(0, 3), (5, 6), (7, 9)]."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def check_base_files(base_dir: Path, expected: dict[str, str], cache: Path | None = None) -> None:
    """Refuse a base whose shards are not the ones the plan was made for (sha256 per file name). ``cache``: the
    JSON file of ``models.file_hashes.FileHashes``, so a served plan hashes a 13 GB base once; it is written
    after a refusal too, so checking a tampered base again costs no new hashing."""
    hashes = FileHashes(cache)
    problems = []
    try:
        for name, sha in sorted(expected.items()):
            path = base_dir / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif (actual := hashes.sha256(path)) != sha:
                problems.append(f"{name} has sha256 {actual[:12]}..., the plan expects {sha[:12]}...")
    finally:
        hashes.save()
    if problems:
        raise ValueError(f"{base_dir} is not the checkpoint the plan was made for: " + "; ".join(problems))


def read_kept_tensors(
    base_dir: Path, adapter: FamilyAdapter, kept_by_layer: dict[int, list[int]],
    constants: dict[int, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The specialist's tensors read from the base: dropped per-expert tensors are skipped unread, stacked
    expert tensors and routers are read one run of kept rows at a time (``runs``); with ``constants`` (a
    substitute plan) every router row in ``router_order`` and the constants as ``substitutes_tensor``."""
    out: dict[str, torch.Tensor] = {}
    for shard in shard_files(base_dir):
        with safe_open(shard, "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                role = adapter.tensor_role(name)
                if role is None or role.layer not in kept_by_layer:
                    out[name] = f.get_tensor(name)
                    continue
                kept = kept_by_layer[role.layer]
                if role.kind == "router" and constants is not None:
                    full = f.get_tensor(name)
                    out[name] = full[router_order(kept, full.shape[0])].contiguous()
                    continue
                if role.kind in ("router", "packed"):
                    part = f.get_slice(name)
                    out[name] = torch.cat([part[a:b] for a, b in runs(kept)]).contiguous()
                elif role.expert in kept:
                    out[adapter.renumber_expert(name, kept.index(role.expert))] = f.get_tensor(name)
    for layer, t in (constants or {}).items():
        out[adapter.substitutes_tensor(layer)] = t
    return out


def specialist_config(
    base_config: dict[str, Any], kept_by_layer: dict[int, list[int]], substitute: bool = False
) -> dict[str, Any]:
    """config.json of the specialist: the base's with the pruned architecture and per-layer counts (and, for a
    substitute plan, the substituted counts E_l - c_l)."""
    adapter = adapter_for(base_config)
    full = adapter.experts_per_layer(base_config)
    counts = [len(kept_by_layer[i]) if i in kept_by_layer else c for i, c in enumerate(full)]
    substituted = [e - c for e, c in zip(full, counts, strict=True)] if substitute else None
    return adapter.pruned_config_dict(base_config, counts, substituted)


def load_from_base(
    base_dir: Path, kept_by_layer: dict[int, list[int]], dtype: str = "float32", device: str = "cpu",
    constants: dict[int, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """The pruned transformers model of ``kept_by_layer`` (and ``constants``: a substitute plan's) built from the
    base checkpoint's kept tensors only, loaded by ``load_causal_lm``'s policy (MXFP4 dequantized, every
    parameter in ``dtype``)."""
    from transformers import AutoConfig

    from moe_specialists.models.pruned import PRUNED_CLASSES, cast_floats, loading_policy

    base_config = read_config(base_dir)
    adapter = adapter_for(base_config)
    config = AutoConfig.for_model(**specialist_config(base_config, kept_by_layer, constants is not None))
    state = read_kept_tensors(base_dir, adapter, kept_by_layer, constants)
    model = PRUNED_CLASSES[adapter.pruned_architecture].from_pretrained(
        None, config=config, state_dict=state, dtype=getattr(torch, dtype), **loading_policy(config)
    )
    return cast_floats(model, dtype).to(device).eval()


def plan_view(
    base_dir: Path, kept_by_layer: dict[int, list[int]], view_dir: Path, plan_json: str,
    constants: dict[int, torch.Tensor] | None = None,
) -> Path:
    """A folder vLLM loads as the specialist: its config.json (kept lists under ``PLAN_KEPT_KEY``), plan.json,
    links to the base's shards, index and side files (tokenizer, chat template, generation config), and a
    substitute plan's constants (``VIEW_SUBSTITUTES``)."""
    from safetensors.torch import save_file

    base_dir = base_dir.resolve()
    base_config = read_config(base_dir)
    config = specialist_config(base_config, kept_by_layer, constants is not None)
    config[PLAN_KEPT_KEY] = {str(layer): kept for layer, kept in sorted(kept_by_layer.items())}
    tmp = view_dir.with_name(f".{view_dir.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    for item in base_dir.iterdir():
        if item.is_file() and item.name not in ("config.json", "plan.json", "README.md", "eval_results.json"):
            (tmp / item.name).symlink_to(item)
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    (tmp / "plan.json").write_text(plan_json)
    if constants is not None:  # for vLLM, and beside plan.json as the plan names them
        if not (base_dir / INDEX_NAME).is_file():  # an index, so no loader takes these files for weight shards
            weight_map = {name: shard.name for shard in shard_files(base_dir) for name in read_header(shard)}
            (tmp / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
        adapter = adapter_for(base_config)
        save_file({adapter.substitutes_tensor(lay): t.contiguous() for lay, t in sorted(constants.items())},
                  tmp / VIEW_SUBSTITUTES)
        if ref := json.loads(plan_json).get("substitutes"):
            save_constants(constants, tmp / ref["file"])
    if view_dir.exists():  # an older view of the same plan: replace it
        for item in view_dir.iterdir():
            item.unlink()
        view_dir.rmdir()
    tmp.rename(view_dir)
    return view_dir


def kept_weight_stats(
    base_dir: Path, kept_by_layer: dict[int, list[int]], substitute: bool = False,
    entries: list[tuple[str, dict[str, Any]]] | None = None,
) -> tuple[int, int]:
    """(parameters, weight bytes) of the specialist that ``kept_by_layer`` cuts from ``base_dir``, from the
    base's safetensors headers alone (``entries``: those headers, already read): a stacked expert tensor or
    router counts len(kept) / E of its size (a ``substitute`` router all of it, plus (E - len(kept)) * H float32
    constants), a per-expert tensor counts when its expert is kept: the numbers of the sliced copy."""
    config = read_config(base_dir)
    adapter = adapter_for(config)
    entries = list(header_entries(base_dir)) if entries is None else entries

    def share(name: str, info: dict[str, Any]) -> float:
        role = adapter.tensor_role(name)
        if role is None or role.layer not in kept_by_layer:
            return 1.0
        kept = kept_by_layer[role.layer]
        if role.kind == "router" and substitute:
            return 1.0
        return len(kept) / info["shape"][0] if role.kind in ("router", "packed") else float(role.expert in kept)

    parameters, nbytes = weight_totals(entries, share)
    if substitute:  # E_l: the base router's rows (a view's config says the kept counts)
        rows = {r.layer: info["shape"][0] for name, info in entries
                if (r := adapter.tensor_role(name)) and r.kind == "router" and len(info["shape"]) == 2}
        constants = sum(rows[lay] - len(kept) for lay, kept in kept_by_layer.items()) * int(config["hidden_size"])
        parameters, nbytes = parameters + constants, nbytes + 4 * constants
    return parameters, nbytes


def plan_file_of(path: Path) -> Path | None:
    """The plan behind a path given to serve: the path itself (a plan .json), a plan view's plan.json, or None
    (a sliced specialist, a base, a hub id)."""
    if path.suffix == ".json" and path.is_file():
        return path
    if not (path / "plan.json").is_file() or not (path / "config.json").is_file():
        return None
    try:
        config = read_config(path)
    except (OSError, ValueError):  # a broken folder is the engine's to report (/readyz), not a plan
        return None
    return path / "plan.json" if PLAN_KEPT_KEY in config else None


def view_kept(config: Any) -> dict[int, list[int]] | None:
    """The kept lists of a plan view's config (None for a sliced specialist or a base)."""
    kept = config.get(PLAN_KEPT_KEY) if isinstance(config, dict) else getattr(config, PLAN_KEPT_KEY, None)
    return None if kept is None else {int(layer): list(ids) for layer, ids in kept.items()}


def view_substitutes(config: Any) -> bool:
    """Whether a specialist's config substitutes experts (``SUBSTITUTED_PER_LAYER_KEY`` with a count > 0)."""
    counts = config.get(SUBSTITUTED_PER_LAYER_KEY) if isinstance(config, dict) else getattr(
        config, SUBSTITUTED_PER_LAYER_KEY, None)
    return bool(counts) and any(counts)


def checked_base(plan: Plan, base: str | Path | None = None, cache: Path | None = None) -> Path:
    """The plan's base folder (hub ids fetched), refused unless it is the model and the files the plan was
    made for."""
    base_dir, _ = resolve_model(base or plan.base.id, plan.base.revision)
    config = read_config(base_dir)
    check_plan_matches(plan, config, adapter_for(config))
    check_base_files(base_dir, plan.base.files, cache)
    return base_dir


def plan_kept(plan: Plan) -> dict[int, list[int]]:
    return dict(zip(plan.layers, plan.kept, strict=True))


def view_of_plan(plan: Plan, cache_root: Path, base: str | Path | None = None) -> Path:
    """The plan view of ``plan`` under ``cache_root`` (named by the plan's sha256, rebuilt only when absent),
    after the base's files were checked against the plan."""
    plan_json = plan.model_dump_json(indent=1)
    view = cache_root / hashlib.sha256(plan_json.encode()).hexdigest()[:16]
    base_dir = checked_base(plan, base, cache_root / "hashes.json")
    if not (view / "plan.json").is_file() or (view / "plan.json").read_text() != plan_json:
        cache_root.mkdir(parents=True, exist_ok=True)
        plan_view(base_dir, plan_kept(plan), view, plan_json, plan_constants(plan))
    return view


def plan_constants(plan: Plan) -> dict[int, torch.Tensor] | None:
    return plan.constants() if plan.recipe.dropped == "substitute" else None


def load_from_plan(plan: Plan, base: str | Path | None = None, dtype: str = "float32", device: str = "cpu"):
    """transformers: the specialist of ``plan`` read from its (checked) base, no sliced copy written."""
    return load_from_base(checked_base(plan, base), plan_kept(plan), dtype, device, plan_constants(plan))
