"""The `sweep` job: compression curves (quality vs experts dropped) for several pruning methods, the overlap of
the experts kept for different languages, and per-language vs multilingual specialists on an unseen language.

One calibration pass per model (every language, both directions, one statistics file); every plan selects its
directions from it. A curve point = plan (multilingual: calibrated on en->X for all X) -> apply (physical
slicing) -> evaluate on en<->X. Drop 0 keeps every expert, so it is the parent's score for every method.
Each evaluation is cached as JSON under ``work_dir/evals`` (a rerun resumes), and the report is rewritten after
each one, so an interrupted sweep still leaves a table of what it measured.
"""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import Field, model_validator

from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.checkpoint import read_config, resolve_model
from moe_specialists.models.generation import Backend, open_generator
from moe_specialists.models.plan import Plan, Recipe
from moe_specialists.pruning.allocation import check_drop
from moe_specialists.pruning.calibrate import CalibrationConfig, calibrate
from moe_specialists.pruning.config import CommaInts, CommaList, DataRef, ExpertsImplementation, JobConfig, ModelRef
from moe_specialists.pruning.data import DEFAULT_DATA, Orientation, language_code, read_parallel
from moe_specialists.pruning.evaluate import EvalResults, EvaluationConfig, evaluate
from moe_specialists.pruning.methods import DEFAULT_METHOD, METHODS
from moe_specialists.pruning.overlap import excess_iou, expected_iou, pooled_iou
from moe_specialists.pruning.plan import make_plan
from moe_specialists.pruning.stats import RoutingStats
from moe_specialists.pruning.sweep_report import plot, render_report


class SweepConfig(JobConfig):
    """What to measure. Checked against the model before anything runs (``check``)."""

    model: ModelRef
    data_dir: DataRef = DEFAULT_DATA
    work_dir: Path  # statistics, cached evaluations, temporary specialists
    out_dir: Path | None = None  # the report (.md, .json, PNG); default: work_dir/report
    languages: CommaList = Field(default=["de", "fr", "ru"], min_length=1)
    pivot: str = "en"
    drops: CommaInts = [0, 8, 16, 24]  # every method
    default_drops: CommaInts = [28]  # extra levels for the default method only
    methods: CommaList = list(METHODS)
    split: str = "devtest"
    limit: int | None = 100
    calib_split: str = "dev"
    calib_limit: int | None = 200
    calib_direction: Orientation = "both"
    unseen: str | None = None  # left out of calibration for the per-language vs multilingual comparison
    unseen_drops: CommaInts = [16, 24]
    backend: Backend = "transformers"
    batch_size: int = 32
    experts_implementation: ExpertsImplementation | None = None  # transformers only
    max_new_tokens: int = 256
    seed: int = 0
    name: str = "compression"  # file stem of the report

    @model_validator(mode="after")
    def _valid(self) -> SweepConfig:
        self.languages = [language_code(lang) for lang in self.languages]
        self.pivot = language_code(self.pivot)
        if self.unseen is not None:
            self.unseen = language_code(self.unseen)
        if self.out_dir is None:
            self.out_dir = self.work_dir / "report"
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        if self.pivot in self.languages:
            raise ValueError(f"languages are the non-pivot side of each direction; remove {self.pivot!r}")
        if self.unseen is not None:
            if self.unseen not in self.languages:
                raise ValueError(f"the unseen language {self.unseen!r} must be one of languages {self.languages}")
            if len(self.languages) < 3:
                raise ValueError(
                    "the unseen comparison needs >= 3 languages: unseen, one for the per-language "
                    "plan, and one more for the multilingual plan"
                )
        return self

    @property
    def directions(self) -> list[str]:
        return [f"{a}-{b}" for lang in self.languages for a, b in ((self.pivot, lang), (lang, self.pivot))]

    def to_x(self, languages: Sequence[str] | None = None) -> list[str]:
        return [f"{self.pivot}-{lang}" for lang in (languages or self.languages)]


class Sweep:
    """Runs the jobs of a ``SweepConfig``; results accumulate in ``self.evals`` (key -> EvalResults)."""

    def __init__(self, config: SweepConfig, log: Callable[[str], None] = print):
        self.config, self.log = config, log
        for split, limit in ((config.calib_split, config.calib_limit), (config.split, config.limit)):
            read_parallel(config.data_dir, split, [config.pivot, *config.languages], limit)  # before any model
        self.model_dir, _ = resolve_model(config.model)
        cfg = read_config(self.model_dir)
        adapter = adapter_for(cfg)
        self.num_experts, self.top_k = adapter.num_experts(cfg), adapter.top_k(cfg)
        for d in {*config.drops, *config.default_drops, *(config.unseen_drops if config.unseen else [])}:
            check_drop(d, self.num_experts, self.top_k)
        self.stats_path = config.work_dir / "stats.safetensors"
        self.evals: dict[str, EvalResults] = {}
        self.seconds: dict[str, float] = {}
        self.started = time.time()

    # -- steps --

    def calibrate(self) -> None:
        if self.stats_path.exists():
            self.log(f"reusing {self.stats_path}")
            return
        t = time.time()
        c = self.config
        calibrate(
            CalibrationConfig(
                model=self.model_dir,
                data_dir=c.data_dir,
                languages=c.languages,
                out=self.stats_path,
                direction=c.calib_direction,
                split=c.calib_split,
                limit=c.calib_limit,
                pivot=c.pivot,
            )
        )
        self.seconds["calibrate"] = time.time() - t
        self.log(f"calibrated in {self.seconds['calibrate']:.0f}s")

    def plan(self, method: str, drop: int, directions: list[str]) -> Plan:
        if not hasattr(self, "_stats"):
            self._stats = RoutingStats.load(self.stats_path)
        m = METHODS[method]
        recipe = Recipe(
            ranking=m.ranking,
            allocation=m.allocation,
            invert=m.invert,
            drop=drop,
            directions=directions,
            seed=self.config.seed,
            pivot=self.config.pivot,
        )
        return make_plan(self._stats, recipe)

    def run_eval(self, key: str, plan: Plan | None = None, directions: list[str] | None = None) -> EvalResults:
        """Evaluate the parent (plan None) or the specialist of ``plan``; cached under work_dir/evals."""
        c = self.config
        cache = c.work_dir / "evals" / f"{key}.json"
        if cache.exists():
            self.evals[key] = EvalResults.model_validate_json(cache.read_text())
            return self.evals[key]
        t = time.time()
        model = self.model_dir
        if plan is not None:
            model = apply_plan(plan, c.work_dir / "specialists" / key, base=self.model_dir, overwrite=True)
        try:
            config = EvaluationConfig(
                model=model,
                data_dir=c.data_dir,
                directions=directions or c.directions,
                split=c.split,
                limit=c.limit,
                backend=c.backend,
                max_new_tokens=c.max_new_tokens,
                batch_size=c.batch_size,
                experts_implementation=c.experts_implementation,
            )
            with open_generator(
                model, c.backend, batch_size=c.batch_size, experts_implementation=c.experts_implementation
            ) as generator:
                res = evaluate(config, generator)
        finally:
            if plan is not None:
                shutil.rmtree(c.work_dir / "specialists" / key, ignore_errors=True)
        res.model = key
        res.save(cache)
        self.evals[key] = res
        self.seconds[key] = time.time() - t
        self.log(f"{key}: chrF {res.mean():.1f} ({self.seconds[key]:.0f}s)")
        return res

    def jobs(self) -> list[tuple[str, Callable[[], object]]]:
        """(key, job) in priority order: parent, the default method, the unseen-language comparison, other
        methods (middle drops first)."""
        c = self.config
        out: list[tuple[str, Callable[[], object]]] = [("parent", lambda: self.run_eval("parent"))]
        drops = [d for d in c.drops if d > 0]
        default_drops = sorted({*drops, *c.default_drops})
        methods = [m for m in c.methods if m != DEFAULT_METHOD]
        if DEFAULT_METHOD in c.methods:
            out += [(f"{DEFAULT_METHOD}-d{d}", self._curve_job(DEFAULT_METHOD, d)) for d in default_drops]
        if c.unseen:
            seen = [lang for lang in c.languages if lang != c.unseen]
            unseen_dirs = [f"{c.pivot}-{c.unseen}", f"{c.unseen}-{c.pivot}"]
            for d in c.unseen_drops:
                for tag, langs in (("single", seen[:1]), ("multi", seen)):
                    key = f"unseen-{tag}-d{d}"
                    out.append((key, self._plan_job(key, d, c.to_x(langs), unseen_dirs)))
        middle = sorted(drops, key=lambda d: (abs(d - self.num_experts / 2), -d))
        out += [(f"{m}-d{d}", self._curve_job(m, d)) for d in middle for m in methods]
        return out

    def _curve_job(self, method: str, drop: int) -> Callable[[], object]:
        return lambda: self.run_eval(f"{method}-d{drop}", self.plan(method, drop, self.config.to_x()))

    def _plan_job(self, key: str, drop: int, calib: list[str], dirs: list[str]) -> Callable[[], object]:
        return lambda: self.run_eval(key, self.plan(DEFAULT_METHOD, drop, calib), dirs)

    def iou(self) -> list[dict]:
        """Per drop level: kept sets of per-language plans (default method, calibrated on en->L)."""
        c = self.config
        rows = []
        for d in sorted({d for d in [*c.drops, *c.default_drops] if d > 0}):
            plans = {lang: self.plan(DEFAULT_METHOD, d, c.to_x([lang])) for lang in c.languages}
            kept = [p.kept for p in plans.values()]
            sizes = [[len(k) for k in p.kept] for p in plans.values()]
            pairs = list(itertools.combinations(range(len(kept)), 2))
            obs = [pooled_iou([kept[i], kept[j]]) for i, j in pairs]
            rnd = [expected_iou([sizes[i], sizes[j]], self.num_experts) for i, j in pairs]
            row = {
                "drop": d,
                "pairwise_observed": statistics.fmean(obs) if obs else None,
                "pairwise_random": statistics.fmean(rnd) if rnd else None,
            }
            if len(kept) >= 2:
                row["pairwise_excess"] = excess_iou(row["pairwise_observed"], row["pairwise_random"])
                row["all_observed"] = pooled_iou(kept)
                row["all_random"] = expected_iou(sizes, self.num_experts)
                row["all_excess"] = excess_iou(row["all_observed"], row["all_random"])
            rows.append(row)
        return rows

    def run(self, deadline: float | None = None) -> Path:
        """Calibrate, run every job (until ``deadline``, a time.time() value), write the report."""
        self.calibrate()
        for key, job in self.jobs():
            if (
                deadline is not None
                and time.time() > deadline
                and not (self.config.work_dir / "evals" / f"{key}.json").exists()
            ):
                self.log(f"deadline: skipping {key}")
                continue
            job()
            self.write()
        return self.write()

    # -- report --

    def score(self, method: str, drop: int, directions: list[str], key: str = "chrf") -> float | None:
        res = self.evals.get("parent" if drop == 0 else f"{method}-d{drop}")
        if res is None or any(d not in res.directions for d in directions):
            return None
        return statistics.fmean(getattr(res.directions[d], key) for d in directions)

    def summary(self) -> dict:
        c = self.config
        return {
            "config": json.loads(c.model_dump_json()),
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "evals": {k: json.loads(v.model_dump_json()) for k, v in self.evals.items()},
            "iou": self.iou() if self.stats_path.exists() else [],
            "seconds": self.seconds,
            "wall_seconds": time.time() - self.started,
        }

    def write(self) -> Path:
        """Write ``<name>.json`` (everything), ``<name>.md`` (tables) and PNG plots to ``out_dir``."""
        c = self.config
        c.out_dir.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        (c.out_dir / f"{c.name}.json").write_text(json.dumps(summary, indent=1))
        plots = plot(self)
        md = c.out_dir / f"{c.name}.md"
        md.write_text(render_report(self, summary, plots))
        return md

    def sides(self) -> list[tuple[str, list[str]]]:
        c = self.config
        from_x = [f"{lang}-{c.pivot}" for lang in c.languages]
        return [(f"{c.pivot}->X", c.to_x()), (f"X->{c.pivot}", from_x), ("both", c.directions)]
