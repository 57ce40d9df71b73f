"""Substitute vs drop served by vLLM (CPU): for each drop level, the plan of the sweep's default method (routing
mass, dynamic allocation) sliced both ways, both engines up at once (each in its own processes), then per round
the same batch of translation prompts greedily on one and then the other (the order alternating), a fixed
number of tokens each (``ignore_eos``). Prints a markdown table: weight bytes on disk, tokens per second (median
and range over rounds) and the per-round ratio substitute / drop with its range.

    VLLM_CPU_KVCACHE_SPACE=1 python benchmarks/substitution_serving.py --statistics S \\
        [--model models/tiny_translator] \\
        [--drops 16,24] [--directions en-de] [--rounds 7] [--batch 16] [--tokens 64] [--eager] [--work DIR]

S: statistics with mean expert outputs (``calibrate`` with the transformers backend). The prompts are sentences
written for this benchmark, rendered with the model's chat template (``models.prompts``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_specialists.models.apply import apply_plan  # noqa: E402
from moe_specialists.models.generation import vllm_engine  # noqa: E402
from moe_specialists.models.plan import Recipe  # noqa: E402
from moe_specialists.models.registry.entries import weight_stats  # noqa: E402
from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR  # noqa: E402
from moe_specialists.pruning.plan import make_plan  # noqa: E402
from moe_specialists.pruning.stats import RoutingStats  # noqa: E402

SENTENCES = [
    "The train to the coast leaves every morning at seven.",
    "She planted tomatoes and beans behind the old barn.",
    "Our neighbours bought a small boat last summer.",
    "The museum is closed on Mondays and public holidays.",
    "He forgot his umbrella at the bakery again.",
    "Children learn languages faster than most adults.",
    "The bridge was repaired after the spring floods.",
    "Please send me the report before Friday evening.",
]


def prompts(model: Path, direction: str, batch: int) -> list[str]:
    from transformers import AutoTokenizer

    from moe_specialists.models.prompts import render

    source, target = direction.split("-")
    tokenizer = AutoTokenizer.from_pretrained(model)
    return [render(tokenizer, source, target, SENTENCES[i % len(SENTENCES)]) for i in range(batch)]


def tokens_per_second(llm, batch: list[str], tokens: int) -> float:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    t = time.perf_counter()
    outs = llm.generate(batch, params, use_tqdm=False)
    seconds = time.perf_counter() - t
    return sum(len(o.outputs[0].token_ids) for o in outs) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=BUNDLED_MODEL_DIR)
    ap.add_argument("--statistics", type=Path, required=True)
    ap.add_argument("--drops", default="16,24")
    ap.add_argument("--directions", default="en-de")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--eager", action="store_true", help="no torch.compile (the gateway compiles by default)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="substitution-serving-"))
    stats = RoutingStats.load(args.statistics)
    directions = args.directions.split(",")
    batch = prompts(args.model, directions[0], args.batch)
    engine = dict(dtype="bfloat16", enforce_eager=args.eager, max_model_len=512, max_num_seqs=args.batch, seed=0)
    print(f"{args.model}, {directions}, {args.batch} prompts x {args.tokens} tokens, {args.rounds} rounds, "
          f"bf16, {'eager' if args.eager else 'torch.compile'}, CPU\n")
    print("| drop | kept | drop: weight MB | tok/s (range) | substitute: weight MB | tok/s (range) | "
          "substitute / drop (range) |")
    print("|---|---|---|---|---|---|---|")
    for d in map(int, args.drops.split(",")):
        folders = {}
        for mode in ("drop", "substitute"):
            plan = make_plan(stats, Recipe(drop=d, directions=directions, dropped=mode))
            plan.base.id = str(args.model)
            plan.save(work / f"{mode}-{d}.plan.json")
            folders[mode] = apply_plan(work / f"{mode}-{d}.plan.json", work / f"{mode}-{d}", overwrite=True)
        speed: dict[str, list[float]] = {"drop": [], "substitute": []}
        with contextlib.ExitStack() as stack:
            llms = {mode: stack.enter_context(vllm_engine(folder, False, **engine)) for mode, folder in folders.items()}
            for llm in llms.values():  # warm-up
                tokens_per_second(llm, batch, 8)
            for r in range(args.rounds):
                for mode in (("drop", "substitute") if r % 2 == 0 else ("substitute", "drop")):
                    speed[mode].append(tokens_per_second(llms[mode], batch, args.tokens))
        ratios = [s / p for s, p in zip(speed["substitute"], speed["drop"], strict=True)]
        mb = {mode: weight_stats(folder)[1] / 1e6 for mode, folder in folders.items()}
        kept = sum(len(k) for k in plan.kept)

        def cell(xs: list[float]) -> str:
            return f"{statistics.median(xs):.0f} ({min(xs):.0f} - {max(xs):.0f})"

        print(f"| {d} | {kept} | {mb['drop']:.2f} | {cell(speed['drop'])} | {mb['substitute']:.2f} | "
              f"{cell(speed['substitute'])} | {statistics.median(ratios):.3f} ({min(ratios):.3f} - "
              f"{max(ratios):.3f}) |", flush=True)


if __name__ == "__main__":
    main()
