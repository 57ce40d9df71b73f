"""Apply a plan: stream the base checkpoint shard by shard and write the specialist (physical slicing).

Router rows and experts stacked on dim 0 (GPT-OSS gate_up_proj / down_proj / biases / MXFP4 blocks and
scales, fused Qwen3 tensors) keep rows ``kept``; per-expert tensors (Qwen3 ``mlp.experts.<j>.*``) of kept
experts are renumbered 0..c_l-1; every other tensor is copied unchanged. At most one shard's tensors are in
memory. The specialist is written to a temporary folder and renamed into place, so a failure (a plan for
another model, a corrupt shard) leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moe_specialists.models.adapters import FamilyAdapter, adapter_for
from moe_specialists.models.checkpoint import (
    INDEX_NAME,
    building_dir,
    file_sha256,
    read_config,
    resolve_model,
    shard_files,
)
from moe_specialists.models.plan import Plan

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def slice_tensor(
    adapter: FamilyAdapter, name: str, tensor: torch.Tensor, kept_by_layer: dict[int, list[int]]
) -> tuple[str, torch.Tensor] | None:
    """The specialist's (name, tensor) for one base tensor, or None when it belongs to a dropped expert."""
    role = adapter.tensor_role(name)
    if role is None or role.layer not in kept_by_layer:
        return name, tensor
    kept = kept_by_layer[role.layer]
    if role.kind in ("router", "packed"):
        return name, tensor.index_select(0, torch.tensor(kept, dtype=torch.long)).contiguous()
    if role.expert not in kept:
        return None
    return adapter.renumber_expert(name, kept.index(role.expert)), tensor


def check_plan_matches(plan: Plan, config: dict, adapter: FamilyAdapter) -> None:
    """Refuse a plan made for another model, with what differs."""
    problems = []
    if plan.base.family != adapter.name:
        problems.append(f"family {plan.base.family!r} vs {adapter.name!r}")
    if plan.base.experts_per_layer != adapter.experts_per_layer(config):
        problems.append(f"experts per layer {plan.base.experts_per_layer} vs {adapter.experts_per_layer(config)}")
    if plan.base.top_k != adapter.top_k(config):
        problems.append(f"top-k {plan.base.top_k} vs {adapter.top_k(config)}")
    if problems:
        raise ValueError(f"this plan was made for another model ({plan.base.id}): " + "; ".join(problems))


def apply_plan(
    plan: Plan | str | Path,
    out_dir: str | Path,
    base: str | Path | None = None,
    revision: str | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the specialist of ``plan`` applied to ``base`` (default: the plan's base id) into ``out_dir``."""
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; choose another folder or pass overwrite")
    base_dir, revision = resolve_model(base or plan.base.id, revision or plan.base.revision)
    config = read_config(base_dir)
    adapter = adapter_for(config)
    check_plan_matches(plan, config, adapter)
    kept_by_layer = dict(zip(plan.layers, plan.kept, strict=True))

    with building_dir(out_dir) as tmp:
        weight_map: dict[str, str] = {}
        total_size = 0
        for shard in shard_files(base_dir):
            expected = plan.base.files.get(shard.name)
            if verify and expected and file_sha256(shard) != expected:
                raise ValueError(f"{shard} differs from the checkpoint the plan was made for (sha256 mismatch)")
            out: dict[str, torch.Tensor] = {}
            try:
                with safe_open(shard, "pt") as f:
                    for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                        sliced = slice_tensor(adapter, name, f.get_tensor(name), kept_by_layer)
                        if sliced is not None:
                            out[sliced[0]] = sliced[1]
            except Exception as e:  # safetensors raises its own error type for corrupt files
                raise ValueError(f"cannot read {shard}: corrupt or not safetensors ({e})") from e
            if out:
                save_file(out, tmp / shard.name, metadata={"format": "pt"})
                for k, v in out.items():
                    weight_map[k] = shard.name
                    total_size += v.numel() * v.element_size()
            del out
        (tmp / INDEX_NAME).write_text(
            json.dumps(
                {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}, indent=1
            )
        )
        (tmp / "config.json").write_text(
            json.dumps(adapter.pruned_config_dict(config, plan.experts_per_layer()), indent=1)
        )
        for item in Path(base_dir).iterdir():  # tokenizer, generation config, chat template, ...
            if item.is_file() and item.suffix not in WEIGHT_SUFFIXES and item.name not in ("config.json", INDEX_NAME):
                shutil.copy2(item, tmp / item.name)
        plan.save(tmp / "plan.json")
    return out_dir
