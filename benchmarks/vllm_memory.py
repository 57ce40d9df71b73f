"""vLLM serving of a tiny base vs a 50%-pruned specialist, and the cost of the statistics hooks.

Per family, prints:
  * engine start-up time (``vllm.LLM(...)``, default settings: engine core in its own process, torch.compile
    unless --eager) and the weight memory of the loaded model as vLLM holds it (parameter bytes of the
    worker's model, plus the dense linears vLLM's CPU backend repacked into oneDNN handles; GPU runners also
    report their own ``model_memory_usage``), base vs specialist, next to
    the kept-parameter fraction of the checkpoint; buffers (RoPE caches: GPT-OSS's YaRN table is 32 MiB in
    fp32) are listed apart, they do not shrink with pruning;
  * generation tokens/s of one eager engine on the base, same prompts, without and with the routing-statistics
    hooks (pruning/collect_vllm.py), one run each after a warm-up.

    python benchmarks/vllm_memory.py [--families qwen3_moe gpt_oss] [--eager] [--prompts 32 --tokens 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from moe_specialists.models.checkpoint import header_entries, weight_totals  # noqa: E402
from moe_specialists.models.generation import vllm_engine  # noqa: E402
from moe_specialists.models.random_tiny import TINY_ENGINE, build_tiny  # noqa: E402
from moe_specialists.pruning.collect_vllm import WORKER_EXTENSION, stats_engine_args  # noqa: E402

SPECIALIST = [12, 6, 8, 6]  # 32 of 4 x 16 experts: 50% pruned, non-uniform


def checkpoint_parameters(path: Path) -> int:
    return weight_totals(header_entries(path))[0]


def start_and_measure(path: Path, eager: bool) -> dict[str, float]:
    t = time.perf_counter()
    engine = {**TINY_ENGINE, "enforce_eager": eager, "worker_extension_cls": WORKER_EXTENSION}
    with vllm_engine(path, False, **engine) as llm:
        startup = time.perf_counter() - t
        mem = llm.collective_rpc("model_weight_bytes")[0]
    return {"startup_s": startup, **mem}


def throughput(path: Path, prompts: int, tokens: int) -> tuple[float, float]:
    """Generated tokens/s without and with the statistics hooks, on one eager engine."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    batch = [TokensPrompt(prompt_token_ids=[(7 * i + j) % 256 for j in range(16 + i % 16)]) for i in range(prompts)]
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    with vllm_engine(path, False, **{**TINY_ENGINE, "max_num_seqs": prompts}, **stats_engine_args()) as llm:
        llm.generate(batch[:4], SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)  # warm-up

        def run(hooks: bool) -> float:
            t = time.perf_counter()
            if hooks:
                llm.collective_rpc("routing_stats_start")
            outs = llm.generate(batch, params, use_tqdm=False)
            if hooks:
                llm.collective_rpc("routing_stats_fetch")
                llm.collective_rpc("routing_stats_stop")
            return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t)

        return run(False), run(True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["qwen3_moe", "gpt_oss"])
    ap.add_argument("--eager", action="store_true", help="start engines without torch.compile")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            base = build_tiny(Path(tmp) / f"{family}-base", family)
            spec = build_tiny(Path(tmp) / f"{family}-specialist", family, SPECIALIST)
            b, s = start_and_measure(base, args.eager), start_and_measure(spec, args.eager)
            kept = checkpoint_parameters(spec) / checkpoint_parameters(base)
            plain, hooked = throughput(base, args.prompts, args.tokens)
            rows.append((family, b, s, kept, plain, hooked))
    mode = "eager" if args.eager else "torch.compile"
    print(f"\nengine start-up ({mode}, engine core in its own process) and weight memory; "
          f"specialist keeps {SPECIALIST} of 16 experts per layer")
    print(f"{'family':10} {'start base s':>12} {'start spec s':>12} {'weights base MiB':>16} "
          f"{'weights spec MiB':>16} {'memory ratio':>12} {'kept params':>11} {'buffers MiB':>11}")
    for family, b, s, kept, _, _ in rows:
        ratio = s["parameter_bytes"] / b["parameter_bytes"]
        print(f"{family:10} {b['startup_s']:12.1f} {s['startup_s']:12.1f} {b['parameter_bytes'] / 2**20:16.2f} "
              f"{s['parameter_bytes'] / 2**20:16.2f} {ratio:12.3f} {kept:11.3f} {s['buffer_bytes'] / 2**20:11.2f}")
        if b["model_memory_usage"]:
            print(f"{'':10} vLLM model_memory_usage: base {b['model_memory_usage'] / 2**20:.2f} MiB, "
                  f"specialist {s['model_memory_usage'] / 2**20:.2f} MiB")
    print(f"\nstatistics hooks: generation tokens/s, base model, eager, {args.prompts} prompts x {args.tokens} tokens")
    print(f"{'family':10} {'without':>10} {'with hooks':>10} {'overhead':>9}")
    for family, _, _, _, plain, hooked in rows:
        print(f"{family:10} {plain:10.1f} {hooked:10.1f} {100 * (plain / hooked - 1):8.1f}%")


if __name__ == "__main__":
    main()
