"""`search` against the sweep's grid on one model: for each quality floor, the plan the search finds (kept experts,
GB, dev and devtest loss, candidate evaluations, minutes) beside the best grid point within the floor (the sweep's
default-method drop levels, judged on the same dev split, confirmed on devtest). Prints a markdown table. With
--refine N, each floor is searched twice: the bisection alone, then with the per-layer refinement after it.

    python benchmarks/search_vs_grid.py --model models/tiny_translator --statistics S -d en-de \\
        --data /work/shared/data/flores200 --limit 100 --work /work/tmp/search-en-de [--floors 0.5,1,2] [--refine 8]

Every evaluation is cached under --work: the floors share what they measured (minutes count only new ones).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_specialists.pruning.search import Search, SearchConfig, search  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--statistics", type=Path, required=True)
    ap.add_argument("-d", "--directions", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--floors", default="0.5,1,2")
    ap.add_argument("--refine", type=int, default=0, help="also search with this many refinement evaluations")
    ap.add_argument("--refine-step", type=int, default=None)
    ap.add_argument("--grid-drops", default="8,16,24,28", help="the sweep's default-method levels")
    args = ap.parse_args()
    base = dict(model=args.model, statistics=args.statistics, directions=args.directions, data_dir=args.data,
                work_dir=args.work, limit=args.limit, max_new_tokens=args.max_new_tokens)
    rows = []
    for floor in [float(f) for f in args.floors.split(",")]:
        for refine in sorted({0, args.refine}):
            t = time.time()
            r = search(SearchConfig(**base, max_loss=floor, refine=refine, refine_step=args.refine_step,
                                    out=args.work / f"plan-{floor}-refine{refine}.json"))
            rows.append((floor, refine, r, (time.time() - t) / 60))
    grid = Search(SearchConfig(**base, max_loss=0))
    n, e = len(grid.layers), grid.num_experts
    points = [grid.candidate(n * (e - d), ["dev", "devtest"]) for d in map(int, args.grid_drops.split(","))]
    print(f"\n{args.directions}: parent {grid.bytes.of_counts([e] * n) / 1e9:.4f} GB; grid drops {args.grid_drops} "
          f"({len(points)} evaluations on dev and devtest, {grid.evals.new} new)\n")
    print("| floor | refine | search: kept | GB | dev loss | devtest loss | evaluations (new) | min | "
          "grid: best within floor | GB | dev loss | devtest loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for floor, refine, r, minutes in rows:
        ch = r.chosen
        ok = [p for p in points if p.loss["dev"] <= floor]
        g = min(ok, key=lambda p: p.weight_bytes) if ok else None
        found = (f"{ch.kept_total} | {ch.weight_bytes / 1e9:.4f} | {ch.loss['dev']:+.2f} | {ch.loss['devtest']:+.2f}"
                 if ch else "all | - | 0 | 0")
        offered = (f"{g.kept_total} | {g.weight_bytes / 1e9:.4f} | {g.loss['dev']:+.2f} | {g.loss['devtest']:+.2f}"
                   if g else "the parent | - | 0 | 0")
        print(f"| {floor} | {refine} | {found} | {r.evaluations} ({r.new_evaluations}) | {minutes:.1f} | {offered} |")
    print("\ngrid points: " + "; ".join(f"kept {p.kept_total}: dev {p.loss['dev']:+.2f}, devtest "
                                       f"{p.loss['devtest']:+.2f}" for p in points))


if __name__ == "__main__":
    main()
