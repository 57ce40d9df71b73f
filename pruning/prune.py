"""The `prune` job: calibrate, plan and apply in one go, optionally registering the result.

What it writes beside ``out``: ``OUT.stats.safetensors`` (the routing statistics, reusable for other drop levels)
and the specialist folder ``OUT`` (or, with ``plan_only``, ``OUT.plan.json`` registered and served from the base).
The plan is the one ``moe-specialists plan STATS --drop D`` makes from the same statistics (every calibrated
direction, the default method unless ``ranking``/``allocation`` say otherwise).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from moe_specialists.models.apply import apply_plan
from moe_specialists.models.plan import Allocation, Plan, Ranking, Recipe
from moe_specialists.models.registry.entries import validate_name
from moe_specialists.models.registry.store import Registry, default_registry_dir
from moe_specialists.pruning.calibrate import CalibrationConfig, calibrate
from moe_specialists.pruning.config import CommaList, DataRef, Device, DType, JobConfig, ModelRef
from moe_specialists.pruning.data import DEFAULT_DATA, Orientation
from moe_specialists.pruning.plan import make_plan
from moe_specialists.pruning.stats import RoutingStats


class PruneConfig(JobConfig):
    """Prune ``model`` for ``languages`` (``direction`` to/from/both the pivot) at ``drop`` experts per layer.
    Everything it would write is checked before the calibration starts: an existing output is refused unless
    ``overwrite``, and so is a registered name."""

    model: ModelRef
    out: Path
    languages: CommaList = Field(min_length=1)
    drop: int = Field(ge=0)
    data_dir: DataRef = DEFAULT_DATA
    direction: Orientation = "to"
    split: str = "dev"
    ranking: Ranking = "routing-mass"
    allocation: Allocation = "dynamic"
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    dtype: DType = "float32"
    device: Device = "cpu"
    register_name: str | None = None  # register the result under this name (`--register NAME`)
    registry: Path | None = None  # default: models.registry.store.default_registry_dir()
    plan_only: bool = False  # register the plan (served from the base), write no sliced copy
    overwrite: bool = False

    @model_validator(mode="after")
    def _feasible(self) -> PruneConfig:
        if self.plan_only and not self.register_name:
            raise ValueError("plan_only registers the plan: give --register NAME")
        if self.register_name:
            validate_name(self.register_name)
        Recipe(ranking=self.ranking, allocation=self.allocation, drop=self.drop, directions=["x"])  # its checks
        self.calibration()
        return self

    @property
    def stats_path(self) -> Path:
        return self.out.with_name(self.out.name + ".stats.safetensors")

    @property
    def written(self) -> Path:
        """The specialist folder, or the plan file with ``plan_only``."""
        return self.out.with_name(self.out.name + ".plan.json") if self.plan_only else self.out

    def calibration(self) -> CalibrationConfig:
        return CalibrationConfig(
            model=self.model, out=self.stats_path, languages=self.languages, data_dir=self.data_dir,
            direction=self.direction, split=self.split, limit=self.limit, batch_size=self.batch_size,
            reap=self.ranking == "reap", dtype=self.dtype, device=self.device,
        )  # fmt: skip


class PruneResult(BaseModel):
    specialist: Path  # the folder, or the plan file with plan_only
    statistics: Path
    registered: str | None
    experts_per_layer: list[int]
    parameters: int
    base_parameters: int


def check_outputs(config: PruneConfig) -> Registry | None:
    """Refuse, before any work, what would overwrite something (unless ``overwrite``); the registry written to."""
    c = config
    if not c.overwrite:
        for path in (c.written, c.stats_path):
            if path.exists():
                raise FileExistsError(f"{path} exists: choose another --out, or pass --overwrite")
    if not c.register_name:
        return None
    registry = Registry(c.registry if c.registry is not None else default_registry_dir())
    if c.register_name in registry and not c.overwrite:
        raise FileExistsError(f"{c.register_name!r} is already registered in {registry.root}: choose another "
                              "name, or pass --overwrite")
    return registry


def prune(config: PruneConfig) -> PruneResult:
    """Run ``config``: calibrate -> ``OUT.stats.safetensors``, ``make_plan`` over every calibrated direction,
    then the sliced specialist (``apply_plan``, which checks what it wrote) or the plan file, and register."""
    c = config
    registry = check_outputs(c)
    calibrate(c.calibration())
    stats = RoutingStats.load(c.stats_path)
    plan: Plan = make_plan(stats, Recipe(ranking=c.ranking, allocation=c.allocation, drop=c.drop,
                                         directions=sorted(stats.groups)))
    if c.plan_only:
        plan.save(c.written)
    else:
        apply_plan(plan, c.out, base=c.model, overwrite=c.overwrite)
    if registry is not None:
        assert c.register_name is not None
        directions = plan.recipe.directions
        if c.plan_only:
            registry.register_plan(c.register_name, c.written, overwrite=c.overwrite, directions=directions)
        else:
            registry.register_dir(c.register_name, c.out, overwrite=c.overwrite, directions=directions)
    return PruneResult(
        specialist=c.written, statistics=c.stats_path, registered=c.register_name,
        experts_per_layer=plan.experts_per_layer(), parameters=plan.parameters, base_parameters=plan.base.parameters,
    )  # fmt: skip
