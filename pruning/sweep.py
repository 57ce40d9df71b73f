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
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.checkpoint import read_config, resolve_model
from moe_specialists.models.plan import Plan, Recipe
from moe_specialists.pruning.allocation import check_drop
from moe_specialists.pruning.calibrate import calibrate
from moe_specialists.pruning.evaluate import Backend, EvalResults, evaluate, load_generator
from moe_specialists.pruning.plan import make_plan
from moe_specialists.pruning.stats import RoutingStats

# --- expert-set overlap (pure functions) ----------------------------------------------------------------------


def pooled_iou(kept: Sequence[Sequence[Sequence[int]]]) -> float:
    """IoU of the kept-expert sets of several specialists (of the same base), pooled over layers: the kept set
    of specialist i is {(l, e): e kept in layer l}, so
        IoU = sum_l |A_1l ∩ ... ∩ A_nl| / sum_l |A_1l ∪ ... ∪ A_nl|.
    ``kept[i][l]`` lists the experts specialist i keeps in MoE layer l. Two specialists: the pairwise IoU."""
    assert len(kept) >= 2 and len({len(k) for k in kept}) == 1, "same number of layers in every specialist"
    inter = union = 0
    for layer in zip(*kept, strict=True):
        sets = [set(s) for s in layer]
        inter += len(set.intersection(*sets))
        union += len(set.union(*sets))
    return inter / union if union else 1.0


def expected_iou(sizes: Sequence[Sequence[int]], num_experts: int | Sequence[int]) -> float:
    """Random-expected value of ``pooled_iou`` for the same per-layer counts: specialist i keeps a uniformly
    random subset of size a_il of the E_l experts of layer l, independently across specialists and layers.
    Each expert is in set i with probability a_il / E_l, so exactly
        E|∩_l| = E_l * prod_i (a_il / E_l)          (two sets: a*b/E)
        E|∪_l| = E_l * (1 - prod_i (1 - a_il / E_l))  (two sets: a + b - a*b/E)
    and the returned value is the RATIO OF EXPECTATIONS sum_l E|∩_l| / sum_l E|∪_l| (as pooled_iou is a ratio
    of sums over layers, this is within O(1/layers) of the expectation of the ratio; ``expected_pair_iou``
    gives the exact expectation for one layer). ``sizes[i][l]`` = a_il."""
    layers = len(sizes[0])
    counts = [num_experts] * layers if isinstance(num_experts, int) else list(num_experts)
    e_inter = e_union = 0.0
    for l_, full in enumerate(counts):
        p = [s[l_] / full for s in sizes]
        e_inter += full * math.prod(p)
        e_union += full * (1 - math.prod(1 - x for x in p))
    return e_inter / e_union if e_union else 1.0


def expected_pair_iou(a: int, b: int, num_experts: int) -> float:
    """Exact E[|A∩B| / |A∪B|] for independent uniformly random subsets A, B of sizes a, b of E experts:
    |A∩B| = i is hypergeometric, P(i) = C(a, i) C(E-a, b-i) / C(E, b), and |A∪B| = a + b - i."""
    total = math.comb(num_experts, b)
    return sum(
        math.comb(a, i) * math.comb(num_experts - a, b - i) / total * (i / (a + b - i) if a + b - i else 1.0)
        for i in range(max(0, a + b - num_experts), min(a, b) + 1)
    )


def excess_iou(observed: float, expected: float) -> float:
    """(observed - random) / (1 - random): 0 = no more overlap than chance, 1 = identical sets."""
    return (observed - expected) / (1 - expected) if expected < 1 else 0.0


# --- configuration --------------------------------------------------------------------------------------------


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    ranking: str
    allocation: str
    invert: bool = False


# The default method first; the two inverted controls are the paper's appendix E.4: drop the HIGHEST
# routing-mass experts (vs random), and inverse-dynamic capacity (vs uniform).
METHODS: dict[str, Method] = {
    "rm-dynamic": Method(label="routing-mass, dynamic", ranking="routing-mass", allocation="dynamic"),
    "rm-uniform": Method(label="routing-mass, uniform", ranking="routing-mass", allocation="uniform"),
    "reap-uniform": Method(label="REAP, uniform", ranking="reap", allocation="uniform"),
    "random-uniform": Method(label="random, uniform", ranking="random", allocation="uniform"),
    "inverted-rm-uniform": Method(
        label="inverted routing-mass, uniform", ranking="routing-mass", allocation="uniform", invert=True
    ),
    "rm-inverse-dynamic": Method(
        label="routing-mass, inverse-dynamic", ranking="routing-mass", allocation="inverse-dynamic"
    ),
}
DEFAULT_METHOD = "rm-dynamic"


class SweepConfig(BaseModel):
    """What to measure. Checked against the model before anything runs (``check``)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    data_dir: Path
    work_dir: Path  # statistics, cached evaluations, temporary specialists
    out_dir: Path = Path("docs/results")
    languages: list[str] = Field(default=["de", "fr", "ru"], min_length=1)
    pivot: str = "en"
    drops: list[int] = [0, 8, 16, 24]  # every method
    default_drops: list[int] = [28]  # extra levels for the default method only
    methods: list[str] = list(METHODS)
    split: str = "devtest"
    limit: int | None = 100
    calib_split: str = "dev"
    calib_limit: int | None = 200
    calib_direction: str = "both"
    unseen: str | None = None  # left out of calibration for the per-language vs multilingual comparison
    unseen_drops: list[int] = [16, 24]
    backend: Backend = "transformers"
    batch_size: int = 32
    experts_implementation: str | None = None  # transformers: eager, batched_mm, grouped_mm
    max_new_tokens: int = 256
    seed: int = 0
    name: str = "compression"  # file stem of the report

    @model_validator(mode="after")
    def _valid(self) -> SweepConfig:
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
            self.model_dir,
            c.data_dir,
            c.languages,
            self.stats_path,
            direction=c.calib_direction,
            split=c.calib_split,
            limit=c.calib_limit,
            pivot=c.pivot,
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
            with load_generator(
                model, c.backend, batch_size=c.batch_size, experts_implementation=c.experts_implementation
            ) as generator:
                res = evaluate(
                    model,
                    c.data_dir,
                    directions or c.directions,
                    split=c.split,
                    limit=c.limit,
                    backend=c.backend,
                    max_new_tokens=c.max_new_tokens,
                    generator=generator,
                )
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
        plots = self.plot()
        md = c.out_dir / f"{c.name}.md"
        md.write_text(render_report(self, summary, plots))
        return md

    def plot(self) -> list[str]:
        """chrF vs drop per method (en->X and X->en panels) and IoU observed vs random; file names."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.log("matplotlib not installed: no plots (pip install matplotlib)")
            return []
        c, E = self.config, self.num_experts
        drops = sorted({0, *c.drops, *c.default_drops})
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, (title, dirs) in zip(axes, self.sides()[:2], strict=True):
            for m in c.methods:
                pts = [(d, self.score(m, d, dirs)) for d in drops]
                pts = [(d, s) for d, s in pts if s is not None]
                if pts:
                    style = "-" if not (METHODS[m].invert or "inverse" in m) else ":"
                    ax.plot(
                        [d for d, _ in pts],
                        [s for _, s in pts],
                        style,
                        marker="o",
                        label=METHODS[m].label,
                        linewidth=2.5 if m == DEFAULT_METHOD else 1.5,
                    )
            ax.set_title(f"{title} (mean over {', '.join(c.languages)})")
            ax.set_xlabel(f"experts dropped per layer (of {E})")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(f"chrF ({c.split}, first {c.limit} passages)")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        names = [f"{c.name}_curves.png"]
        fig.savefig(c.out_dir / names[0], dpi=110)
        plt.close(fig)
        rows = [r for r in self.iou() if r.get("pairwise_observed") is not None] if self.stats_path.exists() else []
        if rows:
            fig, ax = plt.subplots(figsize=(5.5, 4))
            x = [r["drop"] for r in rows]
            ax.plot(x, [r["pairwise_observed"] for r in rows], marker="o", label="pairwise, observed")
            ax.plot(x, [r["pairwise_random"] for r in rows], "--", marker="o", label="pairwise, random")
            if "all_observed" in rows[0]:
                ax.plot(x, [r["all_observed"] for r in rows], marker="s", label="all languages, observed")
                ax.plot(x, [r["all_random"] for r in rows], "--", marker="s", label="all languages, random")
            ax.set_xlabel(f"experts dropped per layer (of {E})")
            ax.set_ylabel("IoU of kept experts")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            names.append(f"{c.name}_iou.png")
            fig.savefig(c.out_dir / names[1], dpi=110)
            plt.close(fig)
        return names

    def sides(self) -> list[tuple[str, list[str]]]:
        c = self.config
        from_x = [f"{lang}-{c.pivot}" for lang in c.languages]
        return [(f"{c.pivot}->X", c.to_x()), (f"X->{c.pivot}", from_x), ("both", c.directions)]


def _f(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def render_report(sweep: Sweep, summary: dict, plots: list[str]) -> str:
    """The markdown report (tables like the paper's appendix E.2 and I)."""
    c, E = sweep.config, sweep.num_experts
    drops = sorted({0, *c.drops, *c.default_drops})
    parent = sweep.evals.get("parent")
    lines = [
        f"# Compression curves: {Path(str(c.model)).name}",
        "",
        f"Generated by `pruning/sweep.py` (`moe-specialists sweep`). Model `{c.model}`: {E} experts per MoE layer, "
        f"top-{sweep.top_k}. Calibration: {c.calib_split} split, first {c.calib_limit} passages, "
        f"{c.pivot}<->{{{','.join(c.languages)}}} ({c.calib_direction}), one statistics file. Curve plans are "
        f"multilingual, ranked on {', '.join(c.to_x())}. Evaluation: {c.split} split, first {c.limit} passages "
        f"per direction, {c.backend} backend, greedy decoding, chrF (sacrebleu, corpus level); degenerate outputs "
        "(empty, looping, template residue) are scored as empty. Drop 0 = the parent for every method.",
        f"Translation time: {sum(r.seconds for e in sweep.evals.values() for r in e.directions.values()) / 60:.1f} "
        f"min over {len(sweep.evals)} evaluations (cached ones included).",
        "",
    ]
    if parent:
        lines += ["## Parent", "", "| direction | chrF | BLEU | degenerate |", "|---|---|---|---|"]
        for d, r in parent.directions.items():
            lines.append(f"| {d} | {r.chrf:.1f} | {r.bleu:.1f} | {r.degenerate_rate:.0%} |")
        lines.append(
            f"| mean | {parent.mean():.1f} | {parent.mean('bleu'):.1f} | {parent.mean('degenerate_rate'):.0%} |"
        )
        lines.append("")
    for title, dirs in sweep.sides():
        lines += [f"## chrF, {title} (mean over {', '.join(c.languages)})", ""]
        lines.append("| drop | % | " + " | ".join(METHODS[m].label for m in c.methods) + " |")
        lines.append("|---|---|" + "---|" * len(c.methods))
        for d in drops:
            cells = [_f(sweep.score(m, d, dirs)) for m in c.methods]
            lines.append(f"| {d} | {d / E:.0%} | " + " | ".join(cells) + " |")
        lines.append("")
    default = DEFAULT_METHOD
    lines += [f"## Default method ({METHODS[default].label}) per direction: chrF (degenerate rate)", ""]
    lines.append("| drop | " + " | ".join(c.directions) + " |")
    lines.append("|---|" + "---|" * len(c.directions))
    for d in drops:
        res = sweep.evals.get("parent" if d == 0 else f"{default}-d{d}")
        if res is None:
            continue
        cells = [f"{res.directions[x].chrf:.1f} ({res.directions[x].degenerate_rate:.0%})" for x in c.directions]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines.append("")
    half, three = E // 2, 3 * E // 4
    if parent:
        lines += [f"## Default method: chrF change from the parent at 50% (drop {half}) and 75% (drop {three})", ""]
        lines += ["| direction | parent | 50% | Δ50% | 75% | Δ75% |", "|---|---|---|---|---|---|"]
        for x in [*c.directions, "mean"]:
            dirs = c.directions if x == "mean" else [x]
            p = sweep.score(default, 0, dirs)
            h, t = sweep.score(default, half, dirs), sweep.score(default, three, dirs)
            dh = None if h is None else h - p
            dt = None if t is None else t - p
            lines.append(f"| {x} | {_f(p)} | {_f(h)} | {_f(dh)} | {_f(t)} | {_f(dt)} |")
        lines.append("")
    if summary["iou"]:
        lines += [
            "## Overlap of kept experts between languages",
            "",
            f"Per-language plans ({METHODS[default].label}, each calibrated on {c.pivot}->L alone). IoU pooled over "
            "layers: sum_l |∩ A_l| / sum_l |∪ A_l| over (layer, expert) pairs. Random = the same per-layer counts "
            "drawn uniformly at random: sum_l E|∩| / sum_l E|∪| with E|A∩B| = ab/E. Excess = (obs - rand) / "
            "(1 - rand). Pairwise = mean over language pairs; all = the intersection of every language's set.",
            "",
            "| drop | % | pairwise obs. | pairwise rand. | pairwise excess | all obs. | all rand. | all excess |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in summary["iou"]:
            cells = [
                r.get(k)
                for k in (
                    "pairwise_observed",
                    "pairwise_random",
                    "pairwise_excess",
                    "all_observed",
                    "all_random",
                    "all_excess",
                )
            ]
            lines.append(f"| {r['drop']} | {r['drop'] / E:.0%} | " + " | ".join(_f(x, 3) for x in cells) + " |")
        lines.append("")
    if c.unseen:
        seen = [lang for lang in c.languages if lang != c.unseen]
        lines += [
            f"## Unseen language: {c.unseen} (left out of calibration)",
            "",
            f"Per-language specialist: calibrated on {c.pivot}-{seen[0]} only; multilingual: on "
            f"{', '.join(c.to_x(seen))}; for reference, the curve plan also calibrated on {c.pivot}-{c.unseen}. "
            f"chrF on {c.pivot}-{c.unseen} / {c.unseen}-{c.pivot}.",
            "",
            "| drop | per-language | multilingual | multilingual incl. the language |",
            "|---|---|---|---|",
        ]
        dirs = [f"{c.pivot}-{c.unseen}", f"{c.unseen}-{c.pivot}"]
        for d in c.unseen_drops:
            cells = []
            for key in (f"unseen-single-d{d}", f"unseen-multi-d{d}", f"{default}-d{d}"):
                res = sweep.evals.get(key)
                cells.append(" / ".join(f"{res.directions[x].chrf:.1f}" for x in dirs) if res else "–")
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines.append("")
    missing = [k for k, _ in sweep.jobs() if k not in sweep.evals]
    if missing:
        lines += ["## Not measured", "", ", ".join(missing), ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
