"""Reproduce docs/results/recovery.md: recovery tuning of the bundled tiny translator (issue 8).

Specialists: routing-mass ranking, dynamic allocation, calibrated on FLORES dev en->{languages}; each drop is
measured without recovery, after (a) SFT on parallel en->X pairs (``sft``) and (b) sequence-level
distillation (the parent's greedy translations of English passages, one language per passage, generated once
and shared by every drop), learnt as they are (``distill``) or also reversed (``distill-both``); FLORES
devtest, en->X and X->en, chrF and the degenerate-output rate.

    # here (CPU, seconds): slice the training corpus and FLORES into a few MB under .device/ (git-ignored)
    python benchmarks/recovery.py prepare --corpus pairs.jsonl.gz --flores FLORES_DIR
    # on a GPU (repeatable: finished models in RESULTS are skipped, so a second run resumes the first)
    python benchmarks/recovery.py run --data .device/recovery --results RESULTS --device cuda --drops 24 28
    python benchmarks/recovery.py table RESULTS/results.json

RESULTS holds three files: results.json (every evaluation and recovery lineage), distilled.jsonl.gz and
stats.safetensors (routing statistics), so a run needs nothing else back from the machine it ran on.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import statistics
import time
from pathlib import Path

import torch

from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.checkpoint import checkpoint_summary, read_config
from moe_specialists.models.plan import Plan, Recipe
from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR
from moe_specialists.pruning.calibrate import CalibrationConfig, calibrate
from moe_specialists.pruning.evaluate import EvaluationConfig, evaluate
from moe_specialists.pruning.pairs import read_pairs, read_passages, write_pairs
from moe_specialists.pruning.plan import make_plan
from moe_specialists.pruning.recover import RecoveryConfig, recover
from moe_specialists.pruning.stats import RoutingStats

ROOT = Path(__file__).resolve().parents[1]
LANGUAGES = ["de", "fr", "ru", "es", "cs"]  # the bundled translator's good languages (see its card)
# distill: the recipe (en->X outputs of the parent); distill-both: also each pair reversed (X->en)
DISTILL_DIRECTIONS = {"distill": "to", "distill-both": "both"}
MAX_CHARS = 300  # English side of training pairs and passages (the model saw sentences up to 256 tokens)


# --- prepare (CPU) --------------------------------------------------------------------------------------------


def prepare(corpus: Path, flores: Path, out: Path, languages: list[str], sft_per_language: int, passages: int,
            seed: int = 0) -> None:  # fmt: skip
    """sft.jsonl.gz: ``sft_per_language`` en->X pairs per language sampled from ``corpus``; passages.jsonl.gz:
    ``passages`` other English sentences of it (for distillation); FLORES dev/devtest of en + languages."""
    rng = random.Random(seed)
    pairs = [p for p in read_pairs(corpus, languages, "to") if len(p.src) < MAX_CHARS]
    rng.shuffle(pairs)
    sft = [p for lang in languages for p in [q for q in pairs if q.target == lang][:sft_per_language]]
    used = {p.src for p in sft}
    english = [x for x in read_passages(corpus) if len(x) < MAX_CHARS and x not in used]
    rng.shuffle(english)
    out.mkdir(parents=True, exist_ok=True)
    write_pairs(sft, out / "sft.jsonl.gz")
    with gzip.open(out / "passages.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"en": x}, ensure_ascii=False) + "\n" for x in english[:passages])
    for split in ("dev", "devtest"):
        (out / "flores200" / split).mkdir(parents=True, exist_ok=True)
        for lang in ["en", *languages]:
            shutil.copyfile(flores / split / f"{lang}.txt", out / "flores200" / split / f"{lang}.txt")
    print(f"{len(sft)} SFT pairs, {min(passages, len(english))} passages, FLORES -> {out}")


# --- run (GPU) ------------------------------------------------------------------------------------------------


class Results:
    """results.json: {model name: {"eval": EvalResults dump, "recovery": lineage or None, ...}}, saved after
    every model so an interrupted run keeps what it finished."""

    def __init__(self, folder: Path):
        self.path = folder / "results.json"
        self.rows: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def add(self, name: str, row: dict) -> None:
        self.rows[name] = row
        self.path.write_text(json.dumps(self.rows, indent=1))


def run(args: argparse.Namespace) -> None:
    data, results_dir, work = Path(args.data), Path(args.results), Path(args.work)
    results_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    results = Results(results_dir)
    flores = data / "flores200"
    directions = [f"en-{x}" for x in args.languages] + [f"{x}-en" for x in args.languages]
    started = time.time()
    device = {"device": args.device, "experts_implementation": args.experts_implementation}

    def out_of_time(stage: str) -> bool:
        late = args.minutes is not None and time.time() - started > 60 * args.minutes
        if late:
            print(f"[{time.time() - started:.0f}s] out of time: {stage} not started")
        return late

    def measure(name: str, model: Path, extra: dict) -> None:
        t0 = time.time()
        res = evaluate(EvaluationConfig(model=model, data_dir=flores, directions=directions, limit=args.limit,
                                        batch_size=args.eval_batch_size, dtype=args.eval_dtype, **device))  # fmt: skip
        results.add(name, {"eval": res.model_dump(exclude={"directions": {"__all__": {"seeds"}}}), **extra})
        print(f"[{time.time() - started:.0f}s] {name}: chrF {res.mean():.1f} ({time.time() - t0:.0f}s)", flush=True)

    if args.device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for the fp32 training
    if "parent" not in results.rows and not out_of_time("parent"):
        parameters = checkpoint_summary(BUNDLED_MODEL_DIR, adapter_for(read_config(BUNDLED_MODEL_DIR)))["parameters"]
        measure("parent", BUNDLED_MODEL_DIR, {"drop": 0, "parameters": parameters, "recovery": None})

    stats = results_dir / "stats.safetensors"
    if not stats.is_file():
        calibrate(CalibrationConfig(model=BUNDLED_MODEL_DIR, data_dir=flores, languages=args.languages, out=stats,
                                    limit=args.calib_limit, batch_size=64, reap=False, dtype="bfloat16",
                                    device=args.device))  # fmt: skip
    distilled = results_dir / "distilled.jsonl.gz"
    train = {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup, "seed": args.seed,
        "device": args.device, "experts_implementation": args.experts_implementation, "log_every": 100,
    }  # fmt: skip
    for drop in args.drops:
        pruned = work / f"d{drop}"
        if not pruned.exists():
            routing = RoutingStats.load(stats)
            plan = make_plan(routing, Recipe(drop=drop, directions=sorted(routing.groups)))
            apply_plan(plan, pruned, base=BUNDLED_MODEL_DIR)
        plan = Plan.load(pruned / "plan.json")
        sizes = {"drop": drop, "parameters": plan.parameters, "experts_per_layer": plan.experts_per_layer()}
        if f"d{drop}" not in results.rows and not out_of_time(f"d{drop}"):
            measure(f"d{drop}", pruned, {**sizes, "recovery": None})
        for mode in args.modes:
            name = f"d{drop}-{mode}"
            if name in results.rows or out_of_time(name):
                continue
            if mode == "sft":
                source = {"mode": "sft", "data": data / "sft.jsonl.gz"}
            elif distilled.is_file():
                source = {"mode": "distill", "distilled": distilled, "direction": DISTILL_DIRECTIONS[mode]}
            else:  # the first distillation generates the parent's translations and keeps them for the others
                source = {"mode": "distill", "direction": DISTILL_DIRECTIONS[mode],
                          "data": data / "passages.jsonl.gz", "limit": args.passages,
                          "backend": "transformers", "max_new_tokens": 256,
                          "generate_batch_size": args.generate_batch_size,
                          "save_data": distilled}  # fmt: skip
            folder = recover(RecoveryConfig(specialist=pruned, out=work / name, languages=args.languages,
                                            overwrite=True, **source, **train))  # fmt: skip
            measure(name, folder, {**sizes, "recovery": Plan.load(folder / "plan.json").lineage["recovery"]})
    print(table(results.rows))


# --- table ----------------------------------------------------------------------------------------------------


def _mean(ev: dict, key: str, directions: list[str]) -> float:
    return statistics.fmean(ev["directions"][d][key] for d in directions)


def table(rows: dict[str, dict]) -> str:
    """One line per model: chrF per direction, en->X / X->en / all means, degenerate rate, recovery cost."""
    first = next(iter(rows.values()))["eval"]["directions"]
    to = [d for d in first if d.startswith("en-")]
    back = [d for d in first if d.endswith("-en")]
    head = ["model", "params", *to, *back, "en->X", "X->en", "all", "degenerate", "train s", "pairs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    parent = rows.get("parent")
    for name, row in rows.items():
        ev, rec = row["eval"], row.get("recovery") or {}
        cells = [f"{ev['directions'][d]['chrf']:.1f}" for d in to + back]
        means = [_mean(ev, "chrf", ds) for ds in (to, back, to + back)]
        if parent and name != "parent":
            ref = [_mean(parent["eval"], "chrf", ds) for ds in (to, back, to + back)]
            means_txt = [f"{m:.1f} ({m - r:+.1f})" for m, r in zip(means, ref, strict=True)]
        else:
            means_txt = [f"{m:.1f}" for m in means]
        params = f"{row['parameters'] / 1e6:.2f}M"
        degenerate = f"{100 * _mean(ev, 'degenerate_rate', to + back):.1f}%"
        cost = [f"{rec['seconds']:.0f}" if rec else "", str(rec.get("pairs", "")) if rec else ""]
        lines.append("| " + " | ".join([name, params, *cells, *means_txt, degenerate, *cost]) + " |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="job", required=True)
    p = sub.add_parser("prepare", help="slice the corpus and FLORES (CPU)")
    p.add_argument("--corpus", type=Path, required=True, help="the training pairs (models/tiny_translator/corpus.py)")
    p.add_argument("--flores", type=Path, required=True, help="a FLORES-style folder (<split>/<lang>.txt)")
    p.add_argument("--out", type=Path, default=ROOT / ".device" / "recovery")
    p.add_argument("--sft-per-language", type=int, default=6000)
    p.add_argument("--passages", type=int, default=30000)
    r = sub.add_parser("run", help="prune, recover and evaluate (GPU)")
    r.add_argument("--data", default=str(ROOT / ".device" / "recovery"))
    r.add_argument("--results", required=True)
    r.add_argument("--work", default="/tmp/recovery")
    r.add_argument("--drops", type=int, nargs="+", default=[24, 28])
    r.add_argument("--modes", nargs="+", default=[*DISTILL_DIRECTIONS, "sft"], choices=[*DISTILL_DIRECTIONS, "sft"])
    r.add_argument("--limit", type=int, default=None, help="FLORES devtest lines per direction (default: all)")
    r.add_argument("--calib-limit", type=int, default=200)
    r.add_argument("--passages", type=int, default=None, help="distillation passages (default: all prepared)")
    r.add_argument("--steps", type=int, default=1500)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--lr", type=float, default=5e-4)
    r.add_argument("--warmup", type=int, default=50)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--eval-batch-size", type=int, default=1024)
    r.add_argument("--generate-batch-size", type=int, default=1024, help="passages the parent translates at once")
    r.add_argument("--eval-dtype", default="bfloat16", help="bfloat16 as served; float32 is faster on CPUs")
    r.add_argument("--device", default="cuda")
    r.add_argument("--experts-implementation", default="grouped_mm")
    r.add_argument("--minutes", type=float, default=None, help="start no new model after this long")
    t = sub.add_parser("table", help="print the markdown table of a results.json")
    t.add_argument("results", type=Path)
    for q in (p, r):
        q.add_argument("--languages", type=lambda s: s.split(","), default=LANGUAGES)
    return ap


def main() -> None:
    args = parser().parse_args()
    if args.job == "prepare":
        prepare(args.corpus, args.flores, args.out, args.languages, args.sft_per_language, args.passages)
    elif args.job == "run":
        run(args)
    else:
        print(table(json.loads(args.results.read_text())))


if __name__ == "__main__":
    main()
