"""Specialists as plans vs sliced copies, on the bundled translator: disk used, vLLM start-up time and the
engine's weight memory for 3 specialists (the bundled en-de and multilingual plans and a 75% one), both ways in
one run, alternating copy/plan per round. Prints a table and the ratios with their spread.

    python benchmarks/plan_serving.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from moe_specialists.models.apply import apply_plan
from moe_specialists.models.generation import vllm_engine
from moe_specialists.models.plan import Plan, plan_from_kept
from moe_specialists.models.plan_loading import view_of_plan
from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR, PLANS_DIR
from moe_specialists.models.vllm_worker import PROBE


def disk_bytes(folder: Path) -> int:
    """Bytes the folder itself stores (symbolic links count as links, not as their targets)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def plans(work: Path) -> dict[str, Plan]:
    out = {}
    for name in ("en-de", "multilingual"):
        plan = Plan.load(PLANS_DIR / f"{name}.json")
        plan.base.id = str(BUNDLED_MODEL_DIR)
        out[name] = plan
    en_de = out["en-de"]
    quarter = [sorted(kept[: max(len(kept) // 2, en_de.base.top_k)]) for kept in en_de.kept]  # about 75% dropped
    out["en-de-75"] = plan_from_kept(BUNDLED_MODEL_DIR, quarter)
    return out


def start(folder: Path) -> tuple[float, int]:
    """Seconds until the engine is ready, and its weight bytes (measured in the worker)."""
    t = time.perf_counter()
    with vllm_engine(folder, True, dtype="bfloat16", enforce_eager=True, max_model_len=512, max_num_seqs=4,
                     worker_extension_cls=PROBE) as llm:
        seconds = time.perf_counter() - t
        weights = llm.collective_rpc("engine_memory")[0]["weights"]
    return seconds, weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="plan-serving-"))
    rows = []
    try:
        for name, plan in plans(work).items():
            copy = apply_plan(plan, work / "copies" / name)
            view = view_of_plan(plan, work / "views")
            starts: dict[str, list[float]] = {"copy": [], "plan": []}
            weights: dict[str, int] = {}
            for _ in range(args.rounds):
                for kind, folder in (("copy", copy), ("plan", view)):
                    seconds, weights[kind] = start(folder)
                    starts[kind].append(seconds)
            rows.append({
                "specialist": name, "experts_kept": sum(map(len, plan.kept)),
                "copy_disk": disk_bytes(copy), "plan_disk": disk_bytes(view),
                "copy_start_s": starts["copy"], "plan_start_s": starts["plan"],
                "copy_weights": weights["copy"], "plan_weights": weights["plan"],
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = disk_bytes(BUNDLED_MODEL_DIR)
    print(f"base checkpoint on disk: {base / 2**20:.1f} MiB (shared by every plan, needed by every copy's apply)")
    print("| specialist | disk: copy | disk: plan | start copy (s) | start plan (s) | plan/copy start | "
          "weights copy | weights plan |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratios = [p / c for p, c in zip(r["plan_start_s"], r["copy_start_s"], strict=True)]
        print(f"| {r['specialist']} | {r['copy_disk'] / 2**20:.1f} MiB | {r['plan_disk'] / 1024:.1f} kB | "
              f"{statistics.median(r['copy_start_s']):.1f} | {statistics.median(r['plan_start_s']):.1f} | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | "
              f"{r['copy_weights'] / 2**20:.2f} MiB | {r['plan_weights'] / 2**20:.2f} MiB |")
    copies, views = sum(r["copy_disk"] for r in rows), sum(r["plan_disk"] for r in rows)
    print(f"3 specialists: copies {copies / 2**20:.1f} MiB vs plans {views / 1024:.1f} kB on disk "
          f"(ratio {views / copies:.5f}); with the base: {(base + copies) / 2**20:.1f} vs "
          f"{(base + views) / 2**20:.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
