"""Training throughput of `moe-specialists recover` in two installs (e.g. before and after a change of the
trainer), measured in one run, alternating A, B, A, B, ... on the same specialist, data, steps and seed.

Each round runs the install's CLI in a fresh process and reads the training seconds the recovered plan.json
records (``lineage.recovery.seconds``: training only, not loading or saving); throughput is sequences per
second, steps x batch size / seconds (both sides train the same number of sequences of the same data), and
tokens per second, that times the mean tokenised length of the training examples. Prints one row per round,
the ratio B/A per round, its median and spread (min..max).

    python benchmarks/recover_throughput.py SPECIALIST --a OLD/.venv/bin/moe-specialists \
        --b .venv/bin/moe-specialists --rounds 5 --steps 30 --batch-size 8 -l de
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path


def run_once(cli: str, specialist: Path, out: Path, args: argparse.Namespace) -> dict:
    """One `recover` (SFT on the FLORES split) in a fresh process; its recorded recovery lineage."""
    cmd = [cli, "recover", str(specialist), "--out", str(out), "--mode", "sft", "--languages", args.languages,
           "--data", str(args.data), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--seed", "0", "--lr", "3e-4", *args.extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads((out / "plan.json").read_text())["lineage"]["recovery"]


def mean_example_tokens(specialist: Path, args: argparse.Namespace) -> float:
    """Mean tokenised length of the pairs both sides train on (prompt + translation)."""
    from transformers import AutoTokenizer

    from moe_specialists.pruning.pairs import read_pairs
    from moe_specialists.pruning.trainer import encode_pair

    tokenizer = AutoTokenizer.from_pretrained(specialist)
    pairs = read_pairs(args.data, args.languages.split(","), "to", "dev")
    lengths = [len(encode_pair(tokenizer, p)[0]) for p in pairs]
    return sum(lengths) / len(lengths)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specialist", type=Path)
    p.add_argument("--a", required=True, help="moe-specialists executable of install A")
    p.add_argument("--b", required=True, help="moe-specialists executable of install B")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("-l", "--languages", default="de")
    p.add_argument("--data", default="flores+", help="parallel data: flores+, sample or a FLORES-style folder")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more options for both recover runs")
    args = p.parse_args()

    tokens = mean_example_tokens(args.specialist, args)
    sequences = args.steps * args.batch_size
    rows: list[tuple[int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="recover-throughput-") as tmp:
        for r in range(args.rounds):
            seconds = {}
            for side, cli in (("a", args.a), ("b", args.b)):
                lineage = run_once(cli, args.specialist, Path(tmp) / f"{side}{r}", args)
                assert lineage["steps"] == args.steps and lineage["batch_size"] == args.batch_size, lineage
                seconds[side] = lineage["seconds"]
            rows.append((r, seconds["a"], seconds["b"]))
            print(f"round {r}: A {sequences / seconds['a']:.1f} seq/s, B {sequences / seconds['b']:.1f} seq/s, "
                  f"B/A {seconds['a'] / seconds['b']:.3f}", flush=True)

    ratios = [a / b for _, a, b in rows]
    print(f"\n{sequences} sequences per run ({args.steps} steps x {args.batch_size}), "
          f"{tokens:.1f} tokens per sequence on average\n")
    print("| round | A seq/s | B seq/s | A tokens/s | B tokens/s | B/A |")
    print("|---|---|---|---|---|---|")
    for (r, a, b), ratio in zip(rows, ratios, strict=True):
        print(f"| {r} | {sequences / a:.1f} | {sequences / b:.1f} | {sequences * tokens / a:.0f} | "
              f"{sequences * tokens / b:.0f} | {ratio:.3f} |")
    print(f"\nB/A median {statistics.median(ratios):.3f}, spread {min(ratios):.3f}..{max(ratios):.3f} "
          f"over {len(ratios)} rounds")


if __name__ == "__main__":
    main()
