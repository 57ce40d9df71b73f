"""Specialists served from a plan (``-s en-de=PLAN.json:...`` or a plan-only registry entry): what the engine
serves is the plan's view of its base, made when the engine starts (``EnginePool`` runs ``plan_spec`` in a
worker thread, so the gateway answers /healthz and /readyz while the base's shards are hashed). A plan that
cannot be used (a base shard changed or missing, a plan for another model, an unreadable plan, no base
folder) fails that engine's start with ``PlanUnusable``, as a corrupt folder fails it: only that specialist is
down, reported in /readyz with the reason."""

from __future__ import annotations

from pathlib import Path

from moe_specialists.models.plan import Plan
from moe_specialists.models.plan_loading import plan_file_of, view_of_plan
from moe_specialists.models.registry.entries import weight_stats
from moe_specialists.service.settings import SpecialistSpec


class PlanUnusable(Exception):
    """The plan of a specialist cannot be served; the message says which file and what differs."""


def plan_file(spec: SpecialistSpec) -> Path | None:
    """The plan behind ``spec`` (a plan .json or a plan view's plan.json), or None (a folder, hub id, URL)."""
    return None if spec.remote else plan_file_of(Path(spec.path))


def plan_spec(spec: SpecialistSpec, views_dir: Path) -> SpecialistSpec:
    """The spec the engine serves for a plan-backed ``spec``: its path the plan's view (made or found under
    ``views_dir``; a registry entry's view is rebuilt where it is) after the base's files were checked against
    the plan; weight bytes, parameters and experts those of the sliced copy (``weight_stats`` of the view, from
    the base's safetensors headers). Any other spec as it is. Blocking (hashing): call it in a thread.
    Raises ``PlanUnusable`` naming the plan and what is wrong."""
    path = plan_file(spec)
    if path is None:
        return spec
    try:
        plan = Plan.load(path)
        view = view_of_plan(plan, views_dir if path == Path(spec.path) else Path(spec.path).parent)
        parameters, weight_bytes = weight_stats(view)
    except Exception as e:  # noqa: BLE001 - whatever is wrong with the plan or its base, this specialist only
        raise PlanUnusable(f"the plan {path} cannot be served: {e}") from e
    return spec.model_copy(update={
        "path": str(view), "weight_bytes": weight_bytes, "base_weight_bytes": plan.base.weight_bytes,
        "parameters": parameters, "experts_kept": sum(len(k) for k in plan.kept),
        "experts_total": sum(plan.base.experts_per_layer[layer] for layer in plan.layers),
    })
