"""The plan: a small JSON file that says which experts a specialist keeps (the shareable artifact). Applying
it to the base model (``models.apply``) reproduces the specialist; ``pruning.plan.make_plan`` makes one from
routing statistics. Only checkpoint-level code lives here, so the registry can read and apply plans without
the pruning package."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from moe_specialists.models.checkpoint import checkpoint_summary, read_config

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
Ranking = Literal["routing-mass", "reap", "frequency", "random"]  # how experts are ranked (pruning.scores)
Allocation = Literal["uniform", "dynamic", "inverse-dynamic"]  # how many each layer keeps (pruning.allocation)
Dropped = Literal["drop", "substitute"]  # substitute: a dropped expert answers its mean output (models.masking)
SUBSTITUTES_SUFFIX = ".substitutes.safetensors"  # beside the plan: <plan stem>.substitutes.safetensors


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
    kept_per_layer: list[int] | None = Field(None, description="experts kept per MoE layer, as a search refined "
                                             "them (instead of the allocation's; they sum to kept_total)")
    invert: bool = False  # control: drop the highest-ranked experts instead
    dropped: Dropped = "drop"
    seed: int = 0
    directions: list[str] = Field(min_length=1)  # calibration groups used for importance, e.g. ["en-de"]
    divergence_languages: list[str] = []  # languages whose divergence from the pivot weights layers
    pivot: str = "en"


class SubstitutesRef(BaseModel):
    """The constants of a substitute plan's dropped experts: a safetensors file beside the plan, tensors
    ``layers.<l>.substitutes`` [E - c_l, H] float32 (rows: the dropped experts, ascending)."""

    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str


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
    substitutes: SubstitutesRef | None = None  # recipe.dropped == "substitute" only
    _constants: dict[int, torch.Tensor] | None = PrivateAttr(None)  # decoder layer -> [E - c_l, H]
    _source: Path | None = PrivateAttr(None)  # the file it was loaded from

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        if self.recipe.dropped == "drop" and self.substitutes is not None:
            raise ValueError("a plan that drops its experts has no substitutes (recipe.dropped is 'drop')")
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

    def dropped(self) -> list[list[int]]:
        """Original indices of the dropped experts, per MoE layer, ascending."""
        return [sorted(set(range(self.base.experts_per_layer[lay])) - set(k)) for lay, k in
                zip(self.layers, self.kept, strict=True)]

    def with_constants(self, constants: dict[int, torch.Tensor]) -> Plan:
        """A substitute plan: each dropped expert of layer l answered by its row of ``constants[l]``
        [E - c_l, H] (dropped experts ascending); written beside the plan by ``save``."""
        out = self.model_copy(update={"recipe": self.recipe.model_copy(update={"dropped": "substitute"})})
        out._constants = check_constants(self, constants)
        return out

    def constants(self) -> dict[int, torch.Tensor]:
        """The substitutes of a substitute plan (read once from beside the file it was loaded from, its
        sha256 checked), decoder layer -> [E - c_l, H] float32."""
        if self.recipe.dropped != "substitute":
            raise ValueError("this plan drops its experts: it has no substitutes")
        if self._constants is None:
            if self.substitutes is None or self._source is None:
                raise ValueError("this substitute plan has no constants: make it again from statistics with mean "
                                 "outputs (`moe-specialists plan ... --dropped substitute`)")
            self._constants = load_constants(self, self._source.parent / self.substitutes.file)
        return self._constants

    def save(self, path: str | Path) -> Path:
        """The plan as JSON at ``path``; a substitute plan's constants beside it (``SUBSTITUTES_SUFFIX``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.recipe.dropped == "substitute":
            side = path.with_name(path.name.removesuffix(".json") + SUBSTITUTES_SUFFIX)
            self.substitutes = SubstitutesRef(file=side.name, sha256=save_constants(self.constants(), side))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.model_dump_json(indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            plan = cls.model_validate_json(Path(path).read_text())
        except OSError as e:
            raise ValueError(f"cannot read plan {path}: {e}") from e
        plan._source = Path(path)
        return plan


def router_order(kept: list[int], experts: int) -> list[int]:
    """Router rows of a substituting layer: the kept experts, then the dropped ones, each ascending."""
    return kept + sorted(set(range(experts)) - set(kept))


def check_constants(plan: Plan, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """``constants`` as float32, refused unless it has [E - c_l, H] rows for every MoE layer of ``plan``
    (one H for all)."""
    import torch

    widths = {int(t.shape[-1]) for t in constants.values()}
    for layer, dropped in zip(plan.layers, plan.dropped(), strict=True):
        t = constants.get(layer)
        if t is None or t.dim() != 2 or t.shape[0] != len(dropped) or len(widths) != 1:
            raise ValueError(
                f"substitutes disagree with the plan in layer {layer}: it drops {len(dropped)} experts, so it needs "
                f"[{len(dropped)}, hidden_size] constants; got {None if t is None else list(t.shape)}"
            )
    return {layer: constants[layer].to(torch.float32).contiguous() for layer in plan.layers}


def save_constants(constants: dict[int, torch.Tensor], path: Path) -> str:
    """Write the constants as safetensors (``layers.<l>.substitutes``), atomically; returns the file's sha256."""
    from safetensors.torch import save

    raw = save({f"layers.{layer}.substitutes": t for layer, t in sorted(constants.items())})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(raw)
    tmp.replace(path)
    return hashlib.sha256(raw).hexdigest()


def load_constants(plan: Plan, path: Path) -> dict[int, torch.Tensor]:
    """The constants file of ``plan``, refused when missing, changed (sha256) or of the wrong shapes."""
    from safetensors.torch import load

    assert plan.substitutes is not None
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"the plan's substitutes {path} cannot be read ({e}): keep it beside the plan") from e
    if hashlib.sha256(raw).hexdigest() != plan.substitutes.sha256:
        raise ValueError(f"{path} is not the substitutes file this plan was made with (sha256 mismatch)")
    tensors = load(raw)
    return check_constants(plan, {int(name.split(".")[1]): t for name, t in tensors.items()})


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
