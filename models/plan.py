"""The plan: a small JSON file that says which experts a specialist keeps (the shareable artifact). Applying
it to the base model (``models.apply``) reproduces the specialist; ``pruning.plan.make_plan`` makes one from
routing statistics. Only checkpoint-level code lives here, so the registry can read and apply plans without
the pruning package."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moe_specialists.models.checkpoint import checkpoint_summary, read_config

FORMAT_VERSION = 1
Ranking = Literal["routing-mass", "reap", "frequency", "random"]  # how experts are ranked (pruning.scores)
Allocation = Literal["uniform", "dynamic", "inverse-dynamic"]  # how many each layer keeps (pruning.allocation)


class BaseRef(BaseModel):
    """The model a plan was made for."""

    model_config = ConfigDict(extra="forbid")
    id: str  # hub id or the local path used at calibration
    revision: str | None = None
    family: str
    files: dict[str, str] = {}  # file name -> sha256
    experts_per_layer: list[int]  # of the base (0 = dense layer)
    top_k: int
    parameters: int
    weight_bytes: int = 0
    parameters_per_expert: list[int]  # per decoder layer (router row included)


class Recipe(BaseModel):
    """How the plan was made. Validated before any computation."""

    model_config = ConfigDict(extra="forbid")
    ranking: Ranking = "routing-mass"
    allocation: Allocation = "dynamic"
    drop: int = Field(ge=0, description="average experts dropped per MoE layer")
    kept_total: int | None = Field(None, description="experts kept over all MoE layers, when finer than drop "
                                   "(drop is then its floor); default N * (E - drop)")
    invert: bool = False  # control: drop the highest-ranked experts instead
    seed: int = 0
    directions: list[str] = Field(min_length=1)  # calibration groups used for importance, e.g. ["en-de"]
    divergence_languages: list[str] = []  # languages whose divergence from the pivot weights layers
    pivot: str = "en"


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    base: BaseRef
    recipe: Recipe
    data_fingerprint: str
    collector: str
    layers: list[int]  # decoder index of each MoE layer
    kept: list[list[int]]  # ORIGINAL indices of the kept experts, per MoE layer, ascending
    scores: list[list[float]]  # importance of every expert, per MoE layer
    divergence: list[float] | None = None
    parameters: int  # after pruning
    lineage: dict[str, Any] = {}  # recovery tuning etc.

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        if len(self.kept) != len(self.layers) or len(self.scores) != len(self.layers):
            raise ValueError(f"plan has {len(self.layers)} MoE layers but {len(self.kept)} kept lists")
        for slot, (layer, kept) in enumerate(zip(self.layers, self.kept, strict=True)):
            full = self.base.experts_per_layer[layer]
            if kept != sorted(set(kept)) or any(not 0 <= e < full for e in kept):
                raise ValueError(f"layer {layer}: kept experts must be distinct ascending indices in [0, {full})")
            if len(kept) < self.base.top_k:
                raise ValueError(f"layer {layer} keeps {len(kept)} experts < top-k {self.base.top_k}")
            assert len(self.scores[slot]) == full
        return self

    def experts_per_layer(self) -> list[int]:
        """Per decoder layer (0 for dense layers): the specialist's config list."""
        counts = [0] * len(self.base.experts_per_layer)
        for layer, kept in zip(self.layers, self.kept, strict=True):
            counts[layer] = len(kept)
        return counts

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.model_dump_json(indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            return cls.model_validate_json(Path(path).read_text())
        except OSError as e:
            raise ValueError(f"cannot read plan {path}: {e}") from e


def pruned_parameters(base: BaseRef, layers: list[int], counts: list[int]) -> int:
    """parameters - sum_l (E_l - c_l) * parameters_per_expert_l"""
    removed = sum(
        (base.experts_per_layer[lay] - c) * base.parameters_per_expert[lay]
        for lay, c in zip(layers, counts, strict=True)
    )
    return base.parameters - removed


def base_ref(model_dir: str | Path, id: str | None = None, revision: str | None = None) -> BaseRef:
    """The ``BaseRef`` of a local checkpoint (family, expert counts, sizes, file hashes) from its config and
    safetensors headers; ``id`` defaults to the folder."""
    from moe_specialists.models.adapters import adapter_for

    config = read_config(Path(model_dir))
    adapter = adapter_for(config)
    s = checkpoint_summary(Path(model_dir), adapter)
    return BaseRef(
        id=str(model_dir) if id is None else id,
        revision=revision,
        family=s["family"],
        files=s["files"],
        experts_per_layer=s["experts_per_layer"],
        top_k=adapter.top_k(config),
        parameters=s["parameters"],
        weight_bytes=s["weight_bytes"],
        parameters_per_expert=s["parameters_per_expert"],
    )


def plan_from_kept(model_dir: str | Path, kept: list[list[int]], recipe: Recipe | None = None) -> Plan:
    """A plan keeping ``kept[slot]`` (original indices) in each MoE layer of a local checkpoint, without
    statistics: for hand-made specialists, tests and benchmarks."""
    from moe_specialists.models.adapters import adapter_for

    config = read_config(Path(model_dir))
    adapter = adapter_for(config)
    adapter.check_prunable(config)
    base = base_ref(model_dir)
    layers = adapter.moe_layers(config)
    return Plan(
        base=base,
        recipe=recipe or Recipe(drop=0, directions=["manual"], allocation="uniform"),
        data_fingerprint="",
        collector="manual",
        layers=layers,
        kept=kept,
        scores=[[0.0] * base.experts_per_layer[lay] for lay in layers],
        parameters=pruned_parameters(base, layers, [len(k) for k in kept]),
    )
