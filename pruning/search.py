"""The `search` job: the smallest plan within a quality floor (``max_loss`` chrF points below the parent on a dev
split), or the largest within a byte budget (``max_bytes``, weights as stored), for the directions to serve.

Candidates are plans of one method (default: routing mass, dynamic allocation) at a kept total B, evaluated on
the parent loaded once with their dropped experts masked out of its routers (``models.masking``: the numbers of
the sliced specialist, no copy written). Which B are tried: ``pruning.budget`` (two bisections, far fewer than a
grid), then, with ``refine`` > 0, the allocation at the B found refined layer by layer (``refine_step`` experts
fewer in one layer at a time, kept when within the floor; the plan's recipe records the counts). Every evaluation
is cached (``pruning.search_evals``), so a rerun, another floor or a fleet reuses what was measured. The plan
found is confirmed on ``confirm_split`` (devtest), saved (and read back), and with ``register`` put in the registry
as a plan entry.

The loss of B over the directions is the mean of the parent's score minus the candidate's (``criterion="worst"``:
the largest one, for fleets whose every pair must meet the floor), in chrF points or, with ``metric="comet"``, in
COMET points x 100 (``comet_model``, e.g. Unbabel/XCOMET-XL, in ``comet_python``: ``pruning.comet``).
``dropped``: "drop" (experts removed), "substitute" (each answered by its mean output, ``models.masking``; the plan
carries the constants) or "either" (each candidate measured both ways, the one that loses less kept; drop on a
tie). Without ``statistics`` the model is calibrated first (``pruning.calibrate.calibrated_for``).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ByteSize, Field, model_validator

from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.apply import check_plan_matches
from moe_specialists.models.checkpoint import read_config, resolve_model
from moe_specialists.models.generation import Backend
from moe_specialists.models.plan import Dropped, Plan, Recipe
from moe_specialists.models.registry.store import Registry, default_registry_dir
from moe_specialists.pruning.budget import check_budget, largest_within_bytes, refinement_order, smallest_within
from moe_specialists.pruning.config import CommaList, DataRef, Device, DType, JobConfig, ModelRef
from moe_specialists.pruning.data import DEFAULT_DATA, read_parallel
from moe_specialists.pruning.evaluate import PairResult, parse_directions
from moe_specialists.pruning.methods import DEFAULT_METHOD, METHODS
from moe_specialists.pruning.model_bytes import ModelBytes
from moe_specialists.pruning.plan import make_plan
from moe_specialists.pruning.quality import SegmentScorer
from moe_specialists.pruning.search_evals import Evaluations
from moe_specialists.pruning.search_report import plot, render
from moe_specialists.pruning.stats import RoutingStats

MIN_PASSAGES = 20  # fewer cannot tell 1 chrF from noise (a passage's chrF spreads by ~10 points)
Criterion = Literal["mean", "worst"]
DroppedChoice = Literal["drop", "substitute", "either"]
Metric = Literal["chrf", "comet"]
Counts = tuple[int, ...]  # experts kept per MoE layer


class SearchConfig(JobConfig):
    model: ModelRef
    statistics: Path | None = None  # routing statistics covering every direction (None: calibrated first)
    calibration_limit: int = Field(100, ge=1)  # dev passages per direction when the job calibrates
    directions: CommaList = Field(min_length=1)
    work_dir: Path  # cached evaluations, the report
    max_loss: float | None = None  # chrF points below the parent, on `split`
    max_bytes: ByteSize | None = None  # weight bytes as stored ("12GB", "7.5GiB" or a number)
    criterion: Criterion = "mean"
    metric: Metric = "chrf"
    comet_model: str | None = None  # metric "comet": hub id or local checkpoint of a COMET model
    comet_python: str = sys.executable  # a Python with unbabel-comet (it pins transformers < 5)
    method: str = DEFAULT_METHOD
    dropped: DroppedChoice = "drop"  # substitute / either: module docstring
    resolution: int = Field(1, ge=1)  # experts in total between two drop levels
    refine: int = Field(0, ge=0)  # per-layer refinement after the bisection: at most this many evaluations
    refine_step: int | None = Field(None, ge=1)  # experts a refinement takes from a layer (None: E // 16, >= 1)
    data_dir: DataRef = DEFAULT_DATA
    split: str = "dev"
    confirm_split: str | None = "devtest"
    limit: int | None = Field(50, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(32, ge=1)
    dtype: DType = "float32"
    device: Device = "cpu"  # transformers
    backend: Backend = "transformers"  # or vllm: candidates judged in a vLLM engine (models.vllm_masking)
    out: Path | None = None  # the plan found (default: work_dir/plan.json)
    register_name: str | None = None
    registry: Path | None = None
    overwrite: bool = False

    @model_validator(mode="after")
    def _valid(self) -> SearchConfig:
        parse_directions(self.directions)
        if self.max_loss is None and self.max_bytes is None:
            raise ValueError("give a quality floor (max_loss, chrF points below the parent) or a budget (max_bytes)")
        if self.max_loss is not None and self.max_loss < 0:
            raise ValueError(f"max_loss is chrF points the specialist may lose (>= 0), got {self.max_loss}")
        if self.metric == "comet" and not self.comet_model:
            raise ValueError("metric comet needs a COMET model: comet_model (e.g. Unbabel/XCOMET-XL)")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {list(METHODS)}")
        if self.out is None:
            self.out = self.work_dir / "plan.json"
        return self


class Candidate(BaseModel):
    kept_total: int
    dropped: Dropped = "drop"
    experts_per_layer: list[int]
    weight_bytes: int
    chrf: dict[str, float]  # split -> mean chrF over the directions
    comet: dict[str, float] = {}  # split -> mean COMET x 100 (metric "comet")
    loss: dict[str, float]  # split -> loss against the parent in the metric (criterion)
    pair_loss: dict[str, dict[str, float]]  # split -> direction -> loss
    degenerate_rate: dict[str, float]


class SearchResult(BaseModel):
    plan: Path | None  # None: nothing meets both the floor and the budget
    chosen: Candidate | None
    parent: dict[str, float]  # split -> mean chrF
    parent_comet: dict[str, float] = {}  # split -> mean COMET x 100 (metric "comet")
    parent_bytes: int
    candidates: list[Candidate]  # every one evaluated, by kept total
    evaluations: int  # candidate evaluations on the search split (cached ones included)
    new_evaluations: int  # of those, measured in this run
    seconds: float
    problem: str | None = None
    registered: str | None = None


def passage_counts(config: SearchConfig, split: str) -> int:
    """Passages per direction on ``split``; refused below MIN_PASSAGES."""
    langs = sorted({lang for pair in parse_directions(config.directions) for lang in pair})
    n = min(len(v) for v in read_parallel(config.data_dir, split, langs, config.limit).values())
    if n < MIN_PASSAGES:
        raise ValueError(
            f"{split} has {n} passages per direction: too few to tell a 1 chrF loss from noise; a search needs "
            f"at least {MIN_PASSAGES} (a larger limit, or a split with more passages)"
        )
    return n


class Search:
    """The candidates and their cached evaluations for one ``SearchConfig``; ``run()`` does the job."""

    def __init__(self, config: SearchConfig, log: Callable[[str], None] = print, comet: SegmentScorer | None = None):
        """``comet``: a loaded segment scorer for metric "comet" (default: ``CometScorer`` of the config's model,
        started at the first evaluation)."""
        self.config, self.log = with_statistics(config, log), log
        c = self.config
        assert c.statistics is not None
        for split in {c.split, *([c.confirm_split] if c.confirm_split else [])}:
            passage_counts(c, split)  # before any model loads
        self.stats = RoutingStats.load(c.statistics)
        self.stats.select_groups(c.directions)  # a direction it has no data for is refused here
        self.modes: list[Dropped] = ["drop", "substitute"] if c.dropped == "either" else [c.dropped]
        means = self.stats.mean_outputs(c.directions) if "substitute" in self.modes else None
        self.model_dir, _ = resolve_model(c.model)
        self.model_config = read_config(self.model_dir)
        self.adapter = adapter_for(self.model_config)
        self.num_experts, self.top_k = self.stats.num_experts, self.adapter.top_k(self.model_config)
        self.layers = self.stats.layers
        # decoder layer -> [E, H] constants of its dropped experts (substitute), None: dropped experts are masked
        self.constants = None if means is None else {layer: means[slot] for slot, layer in enumerate(self.layers)}
        self._plans: dict[tuple[int, str, Counts | None], Plan] = {}
        check_plan_matches(self.plan(len(self.layers) * self.num_experts), self.model_config, self.adapter)
        self.bytes = ModelBytes.of(self.model_dir, self.layers, self.num_experts)
        if c.max_bytes is not None:
            check_budget(int(c.max_bytes), self.bytes.dense,
                         self.bytes.of_counts([self.top_k] * len(self.layers)))
        self.evals = Evaluations(c, self.model_dir, self.adapter, self.constants, comet)
        self.evaluated: dict[Counts, Candidate] = {}  # experts per layer -> the better of its modes
        self.measured: dict[tuple[Counts, str], Candidate] = {}  # (experts per layer, mode) -> every one measured

    # -- candidates --

    def plan(self, kept: int | Counts, mode: Dropped = "drop") -> Plan:
        """The method's plan keeping ``kept`` experts: a total (allocated over the layers by the method) or
        experts per layer (a refinement: the recipe records them); its dropped ones ``mode``. Made once each."""
        kept_total, counts = (kept, None) if isinstance(kept, int) else (sum(kept), tuple(kept))
        if counts is not None and counts == self.allocation(kept_total):
            counts = None
        if (kept_total, mode, counts) not in self._plans:
            n, e = len(self.layers), self.num_experts
            m = METHODS[self.config.method]
            drop = (n * e - kept_total) // n
            recipe = Recipe(ranking=m.ranking, allocation=m.allocation, invert=m.invert, drop=drop,
                            kept_total=None if kept_total == n * (e - drop) else kept_total,
                            kept_per_layer=None if counts is None else list(counts),
                            directions=self.config.directions, dropped=mode if kept_total < n * e else "drop")
            self._plans[kept_total, mode, counts] = make_plan(self.stats, recipe)
        return self._plans[kept_total, mode, counts]

    def allocation(self, kept_total: int) -> Counts:
        """The method's experts per layer at ``kept_total``."""
        return tuple(len(x) for x in self.plan(kept_total).kept)

    def weight_bytes(self, counts: list[int], mode: Dropped | None = None) -> int:
        """Bytes of a plan with these counts, ``mode`` (default: the config's; "either": the larger, substitute)."""
        return self.bytes.of_counts(counts, substitute=(mode or self.modes[-1]) == "substitute")

    def loss(self, parent: dict[str, PairResult], got: dict[str, PairResult]) -> tuple[float, dict[str, float]]:
        pair = {d: self.evals.value(parent[d]) - self.evals.value(got[d]) for d in self.config.directions}
        worst = self.config.criterion == "worst"
        return (max(pair.values()) if worst else statistics.fmean(pair.values())), pair

    def candidate(self, kept: int | Counts, splits: list[str]) -> Candidate:
        """The candidate keeping ``kept`` experts (a total: the method's allocation, or experts per layer),
        measured on ``splits``: of its modes, the one that loses less on the search split (each mode measured
        there; the other splits only for the one kept)."""
        c = self.config
        counts = self.allocation(kept) if isinstance(kept, int) else tuple(kept)
        if counts not in self.evaluated:
            measured = [self.measure(counts, mode, [c.split]) for mode in self.modes]
            self.evaluated[counts] = min(measured, key=lambda x: x.loss[c.split])  # the first (drop) on a tie
        return self.measure(counts, self.evaluated[counts].dropped, splits)

    def measure(self, counts: Counts, mode: Dropped, splits: list[str]) -> Candidate:
        kept_total = sum(counts)
        plan = self.plan(counts, mode)
        kept = dict(zip(plan.layers, plan.kept, strict=True))
        out = self.measured.get((counts, mode)) or Candidate(
            kept_total=kept_total, dropped=mode, experts_per_layer=list(counts),
            weight_bytes=self.weight_bytes(list(counts), mode), chrf={}, loss={}, pair_loss={}, degenerate_rate={})
        for split in splits:
            if split in out.chrf:
                continue
            parent, got = self.evals.scores(None, split), self.evals.scores(kept, split, mode)
            out.loss[split], out.pair_loss[split] = self.loss(parent, got)
            out.chrf[split] = statistics.fmean(r.chrf for r in got.values())
            if self.config.metric == "comet":
                out.comet[split] = statistics.fmean(self.evals.value(r) for r in got.values())
            out.degenerate_rate[split] = statistics.fmean(r.degenerate_rate for r in got.values())
            shape = f", {' '.join(map(str, counts))} per layer" if plan.recipe.kept_per_layer else ""
            self.log(f"kept {kept_total} ({mode}{shape}): {split} chrF {out.chrf[split]:.2f}, "
                     f"loss {out.loss[split]:+.2f}, {out.weight_bytes / 1e6:.1f} MB")
        self.measured[counts, mode] = out
        return out

    def refine(self, counts: Counts) -> Counts:
        """The allocation refined layer by layer (``pruning.budget.refinement_order``): each layer in turn offered
        ``refine_step`` experts fewer, the change kept when the candidate stays within the floor; at most
        ``refine`` evaluations."""
        c = self.config
        step = c.refine_step or max(1, self.num_experts // 16)
        scores = self.plan(sum(counts)).scores
        order = refinement_order(scores, counts, self.top_k, step, METHODS[c.method].invert)
        for slot in order[:c.refine]:
            trial = tuple(n - step if i == slot else n for i, n in enumerate(counts))
            if self.candidate(trial, [c.split]).loss[c.split] <= c.max_loss:  # type: ignore[operator]
                counts = trial
        return counts

    # -- the job --

    def run(self) -> SearchResult:
        c, t = self.config, time.time()
        n, e, k = len(self.layers), self.num_experts, self.top_k
        full = n * e
        cap = full
        if c.max_bytes is not None:
            cap = largest_within_bytes(n, e, k, lambda b: self.weight_bytes([len(x) for x in self.plan(b).kept]),
                                       int(c.max_bytes))  # "either": the cap of the larger mode
        chosen: Counts | None = self.allocation(cap)
        problem = None
        if c.max_loss is not None:
            best = smallest_within(n, e, k, lambda b: self.candidate(b, [c.split]).loss[c.split] <= c.max_loss,
                                   c.resolution)
            if best > cap:
                chosen, problem = None, (
                    f"the smallest plan within {c.max_loss} chrF keeps {best} experts "
                    f"({self.candidate(best, [c.split]).weight_bytes / 1e9:.3f} GB), more than the budget of "
                    f"{int(c.max_bytes) / 1e9:.3f} GB allows ({cap} experts): loosen the floor or raise the budget")  # type: ignore[arg-type]
            else:
                chosen = self.refine(self.allocation(best)) if c.refine and best < full else self.allocation(best)
        result = SearchResult(plan=None, chosen=None, parent={}, parent_bytes=self.bytes.of_counts([e] * n),
                              candidates=[], evaluations=0, new_evaluations=0, seconds=0.0, problem=problem)
        if chosen is not None:
            splits = [c.split, *([c.confirm_split] if c.confirm_split else [])]
            result.chosen = self.candidate(chosen, splits) if sum(chosen) < full else None
            result.plan = self.save(self.plan(chosen, result.chosen.dropped if result.chosen else "drop"))
            if c.register_name and result.plan is not None:
                registry = Registry(c.registry if c.registry is not None else default_registry_dir())
                registry.register_plan(c.register_name, result.plan, overwrite=c.overwrite,
                                       directions=c.directions)
                result.registered = c.register_name
        for split in {c.split, *([c.confirm_split] if c.confirm_split and chosen else [])}:
            parent = self.evals.scores(None, split).values()
            result.parent[split] = statistics.fmean(r.chrf for r in parent)
            if c.metric == "comet":
                result.parent_comet[split] = statistics.fmean(self.evals.value(r) for r in parent)
        result.candidates = [self.measured[key] for key in sorted(self.measured, key=lambda x: (sum(x[0]), x))]
        result.evaluations = sum(c.split in x.chrf for x in result.candidates)
        result.new_evaluations, result.seconds = self.evals.new, time.time() - t
        return result

    def save(self, plan: Plan) -> Path:
        """The plan, written and read back (the same kept experts) before it is reported."""
        out = self.config.out
        assert out is not None
        plan.save(out)
        back = Plan.load(out)
        if back.kept != plan.kept or (plan.recipe.dropped == "substitute" and any(
                not back.constants()[lay].equal(t) for lay, t in plan.constants().items())):
            raise RuntimeError(f"{out} does not read back as the plan written")
        return out

    def close(self) -> None:
        self.evals.close()


def with_statistics(config: SearchConfig, log: Callable[[str], None] = print) -> SearchConfig:
    """``config`` with its statistics: as given, else ``work_dir/stats.safetensors`` (``calibrated_for``)."""
    if config.statistics is not None:
        return config
    from moe_specialists.pruning.calibrate import calibrated_for

    c = config
    out = calibrated_for(c.model, parse_directions(c.directions), c.work_dir / "stats.safetensors", c.data_dir,
                         c.calibration_limit, c.dtype, c.device, log)
    return config.model_copy(update={"statistics": out})


def search(
    config: SearchConfig, log: Callable[[str], None] = print, comet: SegmentScorer | None = None
) -> SearchResult:
    """Run ``config`` and write ``work_dir/search.json`` (the result), ``search.md`` (the Pareto table) and
    ``search.png`` (bytes vs chrF). ``comet``: as for ``Search``."""
    config = with_statistics(config, log)  # here too: the report below names them
    job = Search(config, log, comet)
    try:
        result = job.run()
    finally:
        job.close()
    config.work_dir.mkdir(parents=True, exist_ok=True)
    (config.work_dir / "search.json").write_text(result.model_dump_json(indent=1))
    (config.work_dir / "search.md").write_text(render(config, result))
    plot(config, result, config.work_dir / "search.png", log)
    return result
