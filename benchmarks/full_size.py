"""`apply` at full size: random-weight checkpoints shaped exactly like openai/gpt-oss-20b (24 layers, 32 experts,
hidden 2880, MXFP4 experts, three shards of about 4.5 GB, ~13 GB) and like Qwen/Qwen3-30B-A3B (128 experts,
hidden 2048, per-expert bf16 tensors, ~4 GB shards; fewer layers than 48 to fit the disk), 50% and 75% plans.

Prints, per model and plan: peak RSS of `apply` above its interpreter's baseline (after imports) as a multiple of
the largest tensor and of the largest shard; apply's time against `cp -r` of the same output bytes (same run,
throughput ratio of medians; apply with and without its WILLNEED prefetch, ABBA, twice each, cp twice); output
bytes against the kept-parameter fraction. Then, for the 75% GPT-OSS specialist: vLLM on the CPU loads it (MXFP4)
and its greedy tokens for two prompts equal transformers' (random weights: only the agreement matters). Goals:
peak RSS above baseline <= 2x the largest tensor; throughput >= 0.8x cp. apply and cp both start with their source
out of the page cache (posix_fadvise DONTNEED) and end with os.sync().

    python benchmarks/full_size.py --work /work/tmp/full-size [--qwen-layers 12] [--skip-vllm]

Needs about 30 GB free under --work (checked first); everything it writes there is deleted at the end.
Random bytes stand for the MXFP4 blocks (every byte is two valid FP4 codes) with scales near 2^-8.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPT_OSS_20B = {  # openai/gpt-oss-20b config.json
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0, "eos_token_id": 200002,
    "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880,
    "initial_context_length": 4096, "initializer_range": 0.02, "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12, "max_position_embeddings": 131072,
    "model_type": "gpt_oss", "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
    "num_key_value_heads": 8, "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
    "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                       "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                     "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 201088,
}
QWEN3_30B_A3B = {  # Qwen/Qwen3-30B-A3B config.json (num_hidden_layers set by --qwen-layers)
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
    "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 768,
    "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}
GB = 1e9


def gpt_oss_tensors(c: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor of the released gpt-oss checkpoint, in file order."""
    H, E, I, V = c["hidden_size"], c["num_local_experts"], c["intermediate_size"], c["vocab_size"]  # noqa: N806, E741
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    out = [("model.embed_tokens.weight", "BF16", (V, H))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", "BF16", (H,)), (p + "post_attention_layernorm.weight", "BF16", (H,))]
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            out += [(p + f"self_attn.{name}.weight", "BF16", (rows, H)),
                    (p + f"self_attn.{name}.bias", "BF16", (rows,))]
        out += [(p + "self_attn.o_proj.weight", "BF16", (H, q)), (p + "self_attn.o_proj.bias", "BF16", (H,)),
                (p + "self_attn.sinks", "BF16", (c["num_attention_heads"],)),
                (p + "mlp.router.weight", "BF16", (E, H)), (p + "mlp.router.bias", "BF16", (E,)),
                (p + "mlp.experts.gate_up_proj_blocks", "U8", (E, 2 * I, H // 32, 16)),
                (p + "mlp.experts.gate_up_proj_scales", "U8", (E, 2 * I, H // 32)),
                (p + "mlp.experts.gate_up_proj_bias", "BF16", (E, 2 * I)),
                (p + "mlp.experts.down_proj_blocks", "U8", (E, H, I // 32, 16)),
                (p + "mlp.experts.down_proj_scales", "U8", (E, H, I // 32)),
                (p + "mlp.experts.down_proj_bias", "BF16", (E, H))]
    return out + [("model.norm.weight", "BF16", (H,)), ("lm_head.weight", "BF16", (V, H))]


def qwen3_tensors(c: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    H, E, I, V = c["hidden_size"], c["num_experts"], c["moe_intermediate_size"], c["vocab_size"]  # noqa: N806, E741
    q, kv, d = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"], c["head_dim"]
    out = [("model.embed_tokens.weight", "BF16", (V, H))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", "BF16", (H,)), (p + "post_attention_layernorm.weight", "BF16", (H,)),
                (p + "self_attn.q_proj.weight", "BF16", (q, H)), (p + "self_attn.k_proj.weight", "BF16", (kv, H)),
                (p + "self_attn.v_proj.weight", "BF16", (kv, H)), (p + "self_attn.o_proj.weight", "BF16", (H, q)),
                (p + "self_attn.q_norm.weight", "BF16", (d,)), (p + "self_attn.k_norm.weight", "BF16", (d,)),
                (p + "mlp.gate.weight", "BF16", (E, H))]
        for j in range(E):
            out += [(p + f"mlp.experts.{j}.gate_proj.weight", "BF16", (I, H)),
                    (p + f"mlp.experts.{j}.up_proj.weight", "BF16", (I, H)),
                    (p + f"mlp.experts.{j}.down_proj.weight", "BF16", (H, I))]
    return out + [("model.norm.weight", "BF16", (H,)), ("lm_head.weight", "BF16", (V, H))]


def random_tensor(name: str, dtype: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    if name.endswith("_blocks"):
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    if name.endswith("_scales"):
        return torch.randint(119 - 2, 119 + 2, shape, dtype=torch.uint8, generator=g)  # 2^-10 .. 2^-7
    if name.endswith(("norm.weight", "layernorm.weight")):
        return torch.ones(shape, dtype=torch.bfloat16)
    std = 0.5 if name.endswith(("router.weight", "mlp.gate.weight")) else 0.02
    return (torch.randn(shape, generator=g) * std).to(torch.bfloat16)


def write_checkpoint(folder: Path, config: dict, tensors: list, shard_bytes: float, zero_based: bool) -> dict:
    """Random tensors in shards of about ``shard_bytes``, written tensor by tensor, with an index."""
    from moe_specialists.models.apply import TensorCopy, safetensors_header

    size = {"BF16": 2, "U8": 1}
    nbytes = [size[d] * int(torch.tensor(s).prod()) for _, d, s in tensors]
    n_shards = max(1, round(sum(nbytes) / shard_bytes))
    groups: list[list[int]] = [[] for _ in range(n_shards)]
    done, total = 0, sum(nbytes)
    for i, n in enumerate(nbytes):
        groups[min(n_shards - 1, done * n_shards // total)].append(i)
        done += n
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    weight_map = {}
    for s, group in enumerate(groups):
        file = f"model-{s if zero_based else s + 1:05d}-of-{n_shards - 1 if zero_based else n_shards:05d}.safetensors"
        copies = [TensorCopy(tensors[i][0], tensors[i][1], tensors[i][2], ((0, nbytes[i]),)) for i in group]
        with open(folder / file, "wb") as f:
            f.write(safetensors_header(copies))
            for i in group:
                f.write(memoryview(random_tensor(*tensors[i], g).view(torch.uint8).numpy()))
        weight_map.update({tensors[i][0]: file for i in group})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return {"bytes": total, "largest_tensor": max(nbytes), "largest_shard": max(
        sum(nbytes[i] for i in grp) for grp in groups), "shards": n_shards}


APPLY_CHILD = """
import json, os, sys, threading, time
from moe_specialists.models import apply
from moe_specialists.models.plan import Plan
apply.PREFETCH_BYTES = int(sys.argv[5])
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
plan = Plan.load(sys.argv[1])
base, peak, running = rss(), [0], [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)
sampler = threading.Thread(target=sample)
sampler.start()
os.sync()
t = time.perf_counter()
apply.apply_plan(plan, sys.argv[2], base=sys.argv[3], verify=sys.argv[4] == "1")
os.sync()  # the output on disk, as cp's below
seconds = time.perf_counter() - t
running[0] = False
sampler.join()
print(json.dumps({"seconds": seconds, "baseline_rss": base, "peak_rss": max(peak[0], rss())}))
"""


def run_apply(plan_path: Path, out: Path, base: Path, verify: bool, prefetch: int | None = None) -> dict:
    """``apply`` in a fresh interpreter, its source evicted first; ``prefetch``: bytes of WILLNEED ahead of the
    copy (default: apply's own)."""
    from moe_specialists.models.apply import PREFETCH_BYTES

    evict(base)
    argv = [sys.executable, "-c", APPLY_CHILD, str(plan_path), str(out), str(base), "1" if verify else "0",
            str(PREFETCH_BYTES if prefetch is None else prefetch)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def evict(folder: Path) -> None:
    """Drop a folder's files from the page cache (after a sync they are clean), so the next reader reads the
    disk: apply and cp both start cold."""
    os.sync()
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_cp(folder: Path) -> float:
    """Seconds of ``cp -r`` of ``folder`` (evicted first) including the final sync; the copy is deleted."""
    evict(folder)
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(folder), str(folder) + "-cp"], check=True)
    os.sync()
    seconds = time.perf_counter() - t
    shutil.rmtree(str(folder) + "-cp")
    return seconds


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".safetensors")


def measure(name: str, base: Path, info: dict, work: Path, keep_spec: str | None) -> list[dict]:
    from moe_specialists.models.plan import plan_from_kept

    config = json.loads((base / "config.json").read_text())
    E = config.get("num_local_experts") or config["num_experts"]  # noqa: N806
    rows = []
    plan0 = None
    for drop in (0.5, 0.75):
        keep = int(E * (1 - drop))
        g = torch.Generator().manual_seed(1)
        kept = [sorted(torch.randperm(E, generator=g)[:keep].tolist()) for _ in range(config["num_hidden_layers"])]
        t = time.perf_counter()
        plan = plan_from_kept(base, kept) if plan0 is None else plan0.model_copy(update={
            "kept": kept, "parameters": plan0.base.parameters - sum(
                (E - keep) * plan0.base.parameters_per_expert[i] for i in plan0.layers)})
        plan0 = plan0 or plan
        plan_s = time.perf_counter() - t
        plan_path = work / f"{name}-{drop}.plan.json"
        plan.save(plan_path)
        out = work / f"{name}-{int(drop * 100)}"
        # ABBA: apply with its prefetch, cp of its output, apply without prefetch (twice), cp, apply again
        runs: dict[str, list] = {"apply": [], "apply_no_prefetch": [], "cp": []}
        for kind in ("apply", "cp", "apply_no_prefetch", "apply_no_prefetch", "cp", "apply"):
            if kind == "cp":
                runs["cp"].append(run_cp(out))
                continue
            shutil.rmtree(out, ignore_errors=True)
            runs[kind].append(run_apply(plan_path, out, base, verify=False, prefetch=None if kind == "apply" else 0))
        out_bytes = folder_bytes(out)
        shutil.rmtree(out)
        checked = run_apply(plan_path, out, base, verify=True)
        apply_s = [r["seconds"] for r in runs["apply"]]
        plain_s = [r["seconds"] for r in runs["apply_no_prefetch"]]
        cp_s = statistics.median(runs["cp"])
        above = max(r["peak_rss"] - r["baseline_rss"] for r in runs["apply"] + runs["apply_no_prefetch"])
        row = {
            "model": name, "drop": drop, "kept_param_fraction": plan.parameters / plan.base.parameters,
            "output_bytes": out_bytes, "output_fraction": out_bytes / info["bytes"],
            "apply_s": apply_s, "apply_no_prefetch_s": plain_s, "cp_s": runs["cp"],
            "apply_verify_s": checked["seconds"], "throughput_vs_cp": cp_s / statistics.median(apply_s),
            "throughput_no_prefetch_vs_cp": cp_s / statistics.median(plain_s),
            "throughput_verify_vs_cp": cp_s / checked["seconds"],
            "rss_above_baseline": above, "x_largest_tensor": above / info["largest_tensor"],
            "x_largest_shard": above / info["largest_shard"],
            "verify_rss_above_baseline": checked["peak_rss"] - checked["baseline_rss"], "plan_s": plan_s,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if keep_spec is None or drop != 0.75:
            shutil.rmtree(out)
    return rows


VLLM_CHILD = """
import json, sys, torch
sys.path.insert(0, sys.argv[2])
prompts = [[200, 17, 42, 99, 3, 1000, 5000], [12, 345, 6789, 101, 2024, 77]]
result = {}
if sys.argv[3] == "hf":
    from moe_specialists.models.pruned import load_causal_lm
    model = load_causal_lm(sys.argv[1], "bfloat16").eval()
    other = json.loads(sys.argv[4])  # vLLM's tokens: where they differ, how close transformers' logits were
    result["tokens"], result["gaps"], result["top2_spacing"] = [], [], []
    with torch.no_grad():
        for p, theirs in zip(prompts, other):
            g = model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                               attention_mask=torch.ones(1, len(p), dtype=torch.long))
            mine = g[0, len(p):].tolist()
            result["tokens"].append(mine)
            first = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), None)
            if first is None:
                result["gaps"].append(None)
            else:  # transformers' logits on vLLM's prefix at the first difference
                logits = model(torch.tensor([p + theirs[:first]])).logits[0, -1].float()
                gap = float(logits.max() - logits[theirs[first]])
                result["gaps"].append({"step": first, "max_minus_vllm_choice": gap, "logit_std": float(logits.std())})
            logits = model(g[:, :-1]).logits[0, len(p) - 1:].float()
            top2 = logits.topk(2, dim=-1).values
            result["top2_spacing"].append((top2[:, 0] - top2[:, 1]).tolist())
else:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from moe_specialists.models.generation import vllm_engine
    from moe_specialists.models.random_tiny import TINY_ENGINE
    engine = {**TINY_ENGINE, "dtype": "bfloat16", "max_model_len": 128, "max_num_seqs": 2}
    with vllm_engine(sys.argv[1], True, **engine) as llm:
        config = getattr(llm.llm_engine, "vllm_config", None)
        result["quantization"] = getattr(getattr(config, "model_config", None), "quantization", None)
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        result["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
print(json.dumps(result))
"""


def greedy(spec: Path, backend: str, other: list | None = None) -> tuple[dict, float]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    argv = [sys.executable, "-c", VLLM_CHILD, str(spec), str(ROOT), backend, json.dumps(other)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{backend}: {done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--qwen-layers", type=int, default=12)
    ap.add_argument("--gpt-layers", type=int, default=24)
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--vocab", type=int, default=None, help="smaller vocabularies for a smoke run")
    ap.add_argument("--min-free-gb", type=float, default=30)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.work).free
    print(f"free disk under {args.work}: {free / GB:.1f} GB", flush=True)
    if free < args.min_free_gb * GB:
        raise SystemExit("needs about 30 GB free: pass fewer --qwen-layers / --gpt-layers")
    results = {}
    try:
        vocab = {"vocab_size": args.vocab} if args.vocab else {}
        gpt = {**GPT_OSS_20B, **vocab, "num_hidden_layers": args.gpt_layers,
               "layer_types": (["sliding_attention", "full_attention"] * args.gpt_layers)[: args.gpt_layers]}
        t = time.perf_counter()
        info = write_checkpoint(args.work / "gpt-oss-20b", gpt, gpt_oss_tensors(gpt), 4.6 * GB, zero_based=True)
        print(f"gpt-oss-20b-shaped: {info} written in {time.perf_counter() - t:.0f} s", flush=True)
        results["gpt_oss"] = {"checkpoint": info, "rows": measure("gpt-oss", args.work / "gpt-oss-20b", info,
                                                                    args.work, keep_spec="75")}
        shutil.rmtree(args.work / "gpt-oss-20b")
        spec = args.work / "gpt-oss-75"
        if not args.skip_vllm:
            vl, vl_s = greedy(spec, "vllm")
            hf, hf_s = greedy(spec, "hf", vl["tokens"])
            results["gpt_oss"]["greedy"] = {
                "transformers": hf["tokens"], "vllm": vl["tokens"], "equal": hf["tokens"] == vl["tokens"],
                "at_first_difference": hf["gaps"], "transformers_top2_spacing": hf["top2_spacing"],
                "vllm_quantization": vl["quantization"], "transformers_s": hf_s, "vllm_s": vl_s}
            print(json.dumps(results["gpt_oss"]["greedy"]), flush=True)
        shutil.rmtree(spec)
        qwen = {**QWEN3_30B_A3B, **vocab, "num_hidden_layers": args.qwen_layers, "max_window_layers": args.qwen_layers}
        t = time.perf_counter()
        info = write_checkpoint(args.work / "qwen3-30b-a3b", qwen, qwen3_tensors(qwen), 4.0 * GB, zero_based=False)
        print(f"qwen3-30b-a3b-shaped ({args.qwen_layers} layers): {info} in {time.perf_counter() - t:.0f} s",
              flush=True)
        results["qwen3_moe"] = {"checkpoint": info, "rows": measure("qwen3", args.work / "qwen3-30b-a3b", info,
                                                                      args.work, keep_spec=None)}
    finally:
        print(json.dumps(results, indent=1))
        for p in args.work.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()


if __name__ == "__main__":
    main()
