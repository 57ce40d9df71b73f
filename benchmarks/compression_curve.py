"""Reproduce docs/results/compression.md: the compression sweep of the bundled tiny translator on CPU.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/compression_curve.py [--minutes 25]

One thread per process is faster than two on a busy 2-core machine (no spin contention); the sweep caches
every evaluation under --work, so a rerun resumes where the last one stopped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR
from moe_specialists.pruning.sweep import Sweep, SweepConfig

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(BUNDLED_MODEL_DIR))
    ap.add_argument("--data", default="flores+", help="parallel data: flores+, sample or a FLORES-style folder")
    ap.add_argument("--work", default="/tmp/compression-sweep")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--calib-limit", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=None, help="start no new evaluation after this long")
    ap.add_argument("--experts-implementation", default=None, help="eager, batched_mm or grouped_mm")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    config = SweepConfig(
        model=args.model,
        data_dir=args.data,
        work_dir=Path(args.work),
        out_dir=Path(args.out),
        languages=["de", "fr", "ru"],
        drops=[0, 8, 16, 24],
        default_drops=[28],
        limit=args.limit,
        calib_limit=args.calib_limit,
        unseen="ru",
        unseen_drops=[16, 24],
        batch_size=args.batch_size,
        experts_implementation=args.experts_implementation,
    )
    deadline = time.time() + 60 * args.minutes if args.minutes else None
    print(Sweep(config).run(deadline=deadline))


if __name__ == "__main__":
    main()
