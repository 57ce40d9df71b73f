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

``--random-qwen3``: instead, a random Qwen3-MoE with a released model's proportions (hidden 1024, 32 experts of
1024 x 768, top-8, 4 layers; Qwen3-30B-A3B: 2048, 128 of 2048 x 768, top-8), the plans keeping each layer's first
experts, random constants, token-id prompts: where the experts' work, not the routing's, sets the pace.
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


def weight_config(folder: Path) -> list[int]:
    import json

    return json.loads((folder / "config.json").read_text())["num_experts_per_layer"]


def prompts(model: Path, direction: str, batch: int) -> list[str]:
    from transformers import AutoTokenizer

    from moe_specialists.models.prompts import render

    source, target = direction.split("-")
    tokenizer = AutoTokenizer.from_pretrained(model)
    return [render(tokenizer, source, target, SENTENCES[i % len(SENTENCES)]) for i in range(batch)]


def random_qwen3(work: Path) -> Path:
    """A random bf16 Qwen3-MoE of the proportions in the module docstring (saved once under ``work``)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    out = work / "random-qwen3"
    if not (out / "config.json").is_file():
        torch.manual_seed(0)
        config = Qwen3MoeConfig(vocab_size=2048, hidden_size=1024, num_hidden_layers=4, num_attention_heads=16,
                                num_key_value_heads=4, head_dim=64, intermediate_size=3072, moe_intermediate_size=768,
                                num_experts=32, num_experts_per_tok=8, norm_topk_prob=True,
                                max_position_embeddings=1024, tie_word_embeddings=False)
        config.architectures = ["Qwen3MoeForCausalLM"]
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(out)
    return out


def plans(args: argparse.Namespace, work: Path, d: int) -> dict[str, Path]:
    """drop and substitute plans dropping ``d`` experts per layer, saved under ``work``."""
    import torch

    from moe_specialists.models.plan import plan_from_kept

    out = {}
    if args.random_qwen3:
        base = random_qwen3(work)
        drop = plan_from_kept(base, [list(range(32 - d))] * 4)
        g = torch.Generator().manual_seed(d)
        variants = {"drop": drop, "substitute": drop.with_constants(
            {lay: torch.randn(d, 1024, generator=g) * 0.05 for lay in drop.layers})}
    else:
        stats = RoutingStats.load(args.statistics)
        variants = {mode: make_plan(stats, Recipe(drop=d, directions=args.directions.split(","), dropped=mode))
                    for mode in ("drop", "substitute")}
        for plan in variants.values():
            plan.base.id = str(args.model)
    for mode, plan in variants.items():
        out[mode] = plan.save(work / f"{mode}-{d}{'-random' if args.random_qwen3 else ''}.plan.json")
    return out


def tokens_per_second(llm, batch: list, tokens: int) -> float:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    t = time.perf_counter()
    outs = llm.generate(batch, params, use_tqdm=False)
    seconds = time.perf_counter() - t
    return sum(len(o.outputs[0].token_ids) for o in outs) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=BUNDLED_MODEL_DIR)
    ap.add_argument("--statistics", type=Path, help="required unless --random-qwen3")
    ap.add_argument("--random-qwen3", action="store_true")
    ap.add_argument("--drops", default="16,24")
    ap.add_argument("--directions", default="en-de")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--eager", action="store_true", help="no torch.compile (the gateway compiles by default)")
    args = ap.parse_args()
    if not args.random_qwen3 and args.statistics is None:
        ap.error("--statistics is required (or --random-qwen3)")
    work = args.work or Path(tempfile.mkdtemp(prefix="substitution-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.random_qwen3:
        from vllm.inputs import TokensPrompt

        batch: list = [TokensPrompt(prompt_token_ids=[(7 * i + j) % 2000 + 10 for j in range(24)])
                       for i in range(args.batch)]
    else:
        batch = prompts(args.model, args.directions.split(",")[0], args.batch)
    engine = dict(dtype="bfloat16", enforce_eager=args.eager, max_model_len=512, max_num_seqs=args.batch, seed=0,
                  skip_tokenizer_init=args.random_qwen3)
    print(f"{'random Qwen3-MoE (--random-qwen3)' if args.random_qwen3 else args.model}, {args.directions}, "
          f"{args.batch} prompts x {args.tokens} tokens, {args.rounds} rounds, bf16, "
          f"{'eager' if args.eager else 'torch.compile'}, CPU\n")
    print("| drop | kept | drop: weight MB | tok/s (range) | substitute: weight MB | tok/s (range) | "
          "substitute / drop (range) |")
    print("|---|---|---|---|---|---|---|")
    for d in map(int, args.drops.split(",")):
        folders = {mode: apply_plan(path, path.with_name(path.name.removesuffix(".plan.json")), overwrite=True)
                   for mode, path in plans(args, work, d).items()}
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
        kept = sum(weight_config(folders["drop"]))

        def cell(xs: list[float]) -> str:
            return f"{statistics.median(xs):.0f} ({min(xs):.0f} - {max(xs):.0f})"

        print(f"| {d} | {kept} | {mb['drop']:.2f} | {cell(speed['drop'])} | {mb['substitute']:.2f} | "
              f"{cell(speed['substitute'])} | {statistics.median(ratios):.3f} ({min(ratios):.3f} - "
              f"{max(ratios):.3f}) |", flush=True)


if __name__ == "__main__":
    main()
