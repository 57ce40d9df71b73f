"""Substitute vs drop on one model: for each set of directions and drop level, the plan of the sweep's default
method (routing mass, dynamic allocation) evaluated on the parent with its dropped experts masked out of the
routers (drop: what the sliced specialist computes) and with each dropped expert answered by its mean output
(substitute, ``models.masking``). Prints a markdown table: chrF, degenerate rate, weight GB of both.

    python benchmarks/substitution.py --model models/tiny_translator --statistics S \\
        --data /work/shared/data/flores200 --work /work/tmp/subst \\
        [--limit 100] [--drops 8,16,24,28] [--sets "en-de=en-de;en-X=en-de,en-fr,en-ru"]

S must hold mean expert outputs (``calibrate`` with the transformers backend, since 2026-12-04). Evaluations are
cached under --work (``pruning.search``), so a rerun measures only what is new.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_specialists.pruning.search import Search, SearchConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--statistics", type=Path, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--split", default="devtest")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--drops", default="8,16,24,28")
    ap.add_argument("--sets", default="en-de=en-de;en-X=en-de,en-fr,en-ru")
    args = ap.parse_args()
    t = time.time()
    lines = ["| directions | drop | % | parent chrF | drop: chrF | degenerate | GB | substitute: chrF | degenerate "
             "| GB | substitute's loss / drop's |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for named in args.sets.split(";"):
        name, dirs = named.split("=")
        jobs = {mode: Search(SearchConfig(model=args.model, statistics=args.statistics, directions=dirs,
                                          data_dir=args.data, work_dir=args.work, split=args.split,
                                          confirm_split=None, limit=args.limit, max_new_tokens=args.max_new_tokens,
                                          max_loss=0, dropped=mode), log=lambda _: None)
                for mode in ("drop", "substitute")}
        n, e = len(jobs["drop"].layers), jobs["drop"].num_experts
        parent = statistics.fmean(r.chrf for r in jobs["drop"].evals.scores(None, args.split).values())
        for d in map(int, args.drops.split(",")):
            got = {mode: job.candidate(n * (e - d), [args.split]) for mode, job in jobs.items()}
            dr, su = got["drop"], got["substitute"]
            lost = parent - dr.chrf[args.split]
            ratio = (parent - su.chrf[args.split]) / lost if lost > 0 else float("nan")
            lines.append(
                f"| {name} | {d} | {d / e:.0%} | {parent:.1f} | {dr.chrf[args.split]:.1f} | "
                f"{dr.degenerate_rate[args.split]:.0%} | {dr.weight_bytes / 1e9:.4f} | {su.chrf[args.split]:.1f} | "
                f"{su.degenerate_rate[args.split]:.0%} | {su.weight_bytes / 1e9:.4f} | {ratio:.2f} |")
            print(lines[-1], flush=True)
        for job in jobs.values():
            job.close()
    print(f"\n{args.split}, first {args.limit} passages per direction, greedy, chrF mean over the directions; "
          f"{(time.time() - t) / 60:.1f} min\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
