"""`apply` at full size: random-weight checkpoints shaped exactly like openai/gpt-oss-20b (24 layers, 32 experts,
hidden 2880, MXFP4 experts, three shards of about 4.5 GB, ~13 GB) and like Qwen/Qwen3-30B-A3B (128 experts,
hidden 2048, per-expert bf16 tensors, ~4 GB shards; fewer layers than 48 to fit the disk), 50% and 75% plans.

Prints, per model and plan: peak RSS of `apply` above its interpreter's baseline (after imports) as a multiple of
the largest tensor and of the largest shard; apply's time against `cp -r` of the same output bytes (same run,
throughput ratio of medians; apply with and without its WILLNEED prefetch, ABBA, twice each, cp twice) and the
bytes the disk read for each (ideally the output's: the kept bytes only); output bytes against the kept-parameter
fraction. Goals: peak RSS above baseline <= 2x the largest tensor; throughput
>= 0.8x cp. apply and cp both start with their source out of the page cache (posix_fadvise DONTNEED) and end with
os.sync().

Then, for the 75% GPT-OSS specialist: vLLM on the CPU loads it (MXFP4, bf16) and its greedy tokens for two prompts
are compared with transformers' (dequantized, bf16) and with the exact model (the same weights, every block computed
in fp32): shared greedy prefixes, and teacher-forced on the exact model's tokens how often each bf16 path's argmax
is the exact one's (random weights: only the agreement matters; near-flat logits over 201k tokens make two bf16
paths part at near-ties, so the exact model is the referee).

    python benchmarks/full_size.py --work /work/tmp/full-size [--qwen-layers 12] [--skip-vllm | --agreement-only]
Needs about 30 GB free under --work (checked first); everything it writes there is deleted at the end.
Random bytes stand for the MXFP4 blocks (every byte is two valid FP4 codes) with scales near 2^-8.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if TYPE_CHECKING:
    from moe_specialists.models.plan import Plan

from benchmarks.full_size_checkpoints import (  # noqa: E402
    GPT_OSS_20B,
    QWEN3_30B_A3B,
    gpt_oss_tensors,
    qwen3_tensors,
    write_checkpoint,
)

GB = 1e9


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


def run_apply(plan_path: Path, out: Path, base: Path, verify: bool, prefetch: int | None = None,
              hash_cache: Path | None = None) -> dict:
    """``apply`` in a fresh interpreter, its source evicted first; ``prefetch``: bytes of WILLNEED ahead of the
    copy (default: apply's own); ``hash_cache``: the folder of its file-hash cache (default: this process's
    MOE_CACHE_DIR)."""
    from moe_specialists.models.apply import PREFETCH_BYTES

    evict(base)
    argv = [sys.executable, "-c", APPLY_CHILD, str(plan_path), str(out), str(base), "1" if verify else "0",
            str(PREFETCH_BYTES if prefetch is None else prefetch)]
    env = os.environ | ({"MOE_CACHE_DIR": str(hash_cache)} if hash_cache else {})
    before = disk_read_bytes(base)
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "read_bytes": disk_read_bytes(base) - before}


def disk_read_bytes(path: Path) -> int:
    """Bytes the block device holding ``path`` has read since boot: sectors read (the third field of
    /sys/dev/block/MAJOR:MINOR/stat) x 512. Other readers of the disk count too."""
    st_dev = path.stat().st_dev
    stat = Path(f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}/stat").read_text()
    return int(stat.split()[2]) * 512


def evict(folder: Path) -> None:
    """Drop a folder's files from the page cache (after a sync they are clean), so the next reader reads the
    disk: apply and cp both start cold."""
    os.sync()
    for p in folder.iterdir():
        if p.is_dir():
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_cp(folder: Path) -> dict:
    """Seconds of ``cp -r`` of ``folder`` (evicted first) including the final sync, and the bytes the disk read;
    the copy is deleted."""
    evict(folder)
    before = disk_read_bytes(folder)
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(folder), str(folder) + "-cp"], check=True)
    os.sync()
    seconds = time.perf_counter() - t
    read = disk_read_bytes(folder) - before
    shutil.rmtree(str(folder) + "-cp")
    return {"seconds": seconds, "read_bytes": read}


def hub_cached(base: Path, hub: Path, repo: str) -> Path:
    """``base`` laid out as huggingface_hub caches it (hard links, no copy): every file a blob of
    ``hub/models--bench--<repo>/blobs/`` named by its hub hash (the sha256 of an LFS file: the safetensors shards;
    the git blob sha1 of the others), linked from ``snapshots/<revision>/``. Returns the snapshot folder."""
    from moe_specialists.models.file_hashes import file_sha256

    repo_dir = hub / f"models--bench--{repo}"
    snapshot = repo_dir / "snapshots" / ("0" * 40)
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in sorted(base.iterdir()):
        if f.suffix == ".safetensors":
            blob = file_sha256(f)
        else:
            data = f.read_bytes()
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        os.link(f, repo_dir / "blobs" / blob)
        (snapshot / f.name).symlink_to(Path("../../blobs") / blob)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    return snapshot


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".safetensors")


def random_plan(base: Path, drop: float, like: Plan | None = None) -> Plan:
    """A plan keeping a random (1 - drop) of every layer's experts (seed 1); ``like``: a plan of the same base, whose
    parameter counts are reused instead of reading the base's headers again."""
    from moe_specialists.models.plan import plan_from_kept

    config = json.loads((base / "config.json").read_text())
    E = config.get("num_local_experts") or config["num_experts"]  # noqa: N806
    keep = int(E * (1 - drop))
    g = torch.Generator().manual_seed(1)
    kept = [sorted(torch.randperm(E, generator=g)[:keep].tolist()) for _ in range(config["num_hidden_layers"])]
    if like is None:
        return plan_from_kept(base, kept)
    return like.model_copy(update={"kept": kept, "parameters": like.base.parameters - sum(
        (E - keep) * like.base.parameters_per_expert[i] for i in like.layers)})


def measure(name: str, base: Path, info: dict, work: Path, keep_spec: str | None, drops: tuple) -> list[dict]:
    rows = []
    plan0 = None
    snapshot = hub_cached(base, work / "hub", name)
    for drop in drops:
        t = time.perf_counter()
        plan = random_plan(base, drop, plan0)
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
        # verified, as the CLI applies: no hash known (a fresh cache), the base's hashes known (the plan's creation
        # kept them: a second apply), the base in the hub cache (a fresh cache: blob names), alternating
        verified: dict[str, list] = {"cold": [], "known": [], "hub": []}
        for kind in ("cold", "known", "hub", "hub", "known"):
            shutil.rmtree(out)
            fresh = work / f"hash-cache-{kind}-{len(verified[kind])}"
            verified[kind].append(run_apply(plan_path, out, snapshot if kind == "hub" else base, verify=True,
                                            hash_cache=None if kind == "known" else fresh))
            shutil.rmtree(fresh, ignore_errors=True)
        checked = verified["cold"][0]
        known_s = statistics.median(r["seconds"] for r in verified["known"])
        hub_s = statistics.median(r["seconds"] for r in verified["hub"])
        apply_s = [r["seconds"] for r in runs["apply"]]
        plain_s = [r["seconds"] for r in runs["apply_no_prefetch"]]
        cp_s = statistics.median(r["seconds"] for r in runs["cp"])
        above = max(r["peak_rss"] - r["baseline_rss"] for r in runs["apply"] + runs["apply_no_prefetch"])
        row = {
            "model": name, "drop": drop, "kept_param_fraction": plan.parameters / plan.base.parameters,
            "output_bytes": out_bytes, "output_fraction": out_bytes / info["bytes"],
            "apply_s": apply_s, "apply_no_prefetch_s": plain_s, "cp_s": [r["seconds"] for r in runs["cp"]],
            "read_bytes": {kind: [r["read_bytes"] for r in rs] for kind, rs in runs.items()},
            "apply_verify_s": checked["seconds"], "throughput_vs_cp": cp_s / statistics.median(apply_s),
            "throughput_no_prefetch_vs_cp": cp_s / statistics.median(plain_s),
            "throughput_verify_vs_cp": cp_s / checked["seconds"],
            "apply_verify_known_s": [r["seconds"] for r in verified["known"]],
            "apply_verify_hub_s": [r["seconds"] for r in verified["hub"]],
            "verify_read_bytes": {kind: [r["read_bytes"] for r in rs] for kind, rs in verified.items()},
            "throughput_verify_known_vs_cp": cp_s / known_s, "throughput_verify_hub_vs_cp": cp_s / hub_s,
            "rss_above_baseline": above, "x_largest_tensor": above / info["largest_tensor"],
            "x_largest_shard": above / info["largest_shard"],
            "verify_rss_above_baseline": checked["peak_rss"] - checked["baseline_rss"], "plan_s": plan_s,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if keep_spec is None or drop != 0.75:
            shutil.rmtree(out)
    shutil.rmtree(work / "hub")
    return rows


AGREEMENT_CHILD = """
import json, sys, torch
sys.path.insert(0, sys.argv[2])
backend, reference = sys.argv[3], json.loads(sys.argv[4])
prompts = [[200, 17, 42, 99, 3, 1000, 5000], [12, 345, 6789, 101, 2024, 77]]
result = {}
if backend in ("hf", "fp32"):
    from moe_specialists.models.pruned import load_causal_lm
    model = load_causal_lm(sys.argv[1], "bfloat16").eval()
    model.generation_config.eos_token_id = None
    if backend == "fp32":  # the exact model: bf16 weights (exact in fp32), each block computed in fp32
        workspace, saved = {}, {}  # one fp32 buffer per block kind and parameter, refilled before each forward
        f32 = lambda a: a.float() if torch.is_tensor(a) and a.is_floating_point() else a
        def up(module, args, kwargs):
            saved[module] = [(name, p, p.data) for name, p in module.named_parameters()]
            for name, p, data in saved[module]:
                key = (type(module), name, data.shape)
                p.data = workspace.setdefault(key, torch.empty(data.shape)).copy_(data)
            return tuple(map(f32, args)), {k: f32(v) for k, v in kwargs.items()}
        def down(module, args, out):
            for _, p, data in saved.pop(module):
                p.data = data
        for m in [*model.model.layers, model.model.norm, model.lm_head]:
            m.register_forward_pre_hook(up, with_kwargs=True)
            m.register_forward_hook(down)
        model.model.embed_tokens.register_forward_hook(lambda module, args, out: out.float())
    result["tokens"], result["forced"] = [], []
    with torch.no_grad():
        for p in prompts:
            g = model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False,
                               attention_mask=torch.ones(1, len(p), dtype=torch.long))
            result["tokens"].append(g[0, len(p):].tolist())
        for p, ref in zip(prompts, reference or result["tokens"]):  # teacher-forced on the reference's tokens
            logits = model(torch.tensor([p + ref])).logits[0, len(p) - 1 : len(p) - 1 + len(ref)].float()
            top2 = logits.topk(2, dim=-1).values
            result["forced"].append({
                "argmax": logits.argmax(-1).tolist(),
                "margin_to_reference": (logits.amax(-1) - logits.gather(1, torch.tensor(ref)[:, None])[:, 0]).tolist(),
                "top2_spacing": (top2[:, 0] - top2[:, 1]).tolist()})
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
        # teacher-forced: the top-1 prompt logprob at each of the reference's tokens (logprob gaps = logit gaps)
        forced = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p + ref) for p, ref in zip(prompts, reference)], forced,
                            use_tqdm=False)
        result["forced"] = []
        for p, ref, o in zip(prompts, reference, outs):
            steps = o.prompt_logprobs[len(p):]
            best = [max(s.items(), key=lambda kv: kv[1].logprob) for s in steps]
            result["forced"].append({
                "argmax": [t for t, _ in best],
                "margin_to_reference": [b.logprob - s[r].logprob for (_, b), s, r in zip(best, steps, ref)]})
print(json.dumps(result))
"""


def agreement_run(spec: Path, backend: str, reference: list | None = None) -> tuple[dict, float]:
    """Greedy tokens of one backend on the two prompts, and its argmax teacher-forced on ``reference``'s tokens."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    argv = [sys.executable, "-c", AGREEMENT_CHILD, str(spec), str(ROOT), backend, json.dumps(reference)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{backend}: {done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - t


def agreed_prefix(a: list[int], b: list[int]) -> int:
    """Number of leading tokens two greedy sequences of the same length share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


def agreement(spec: Path) -> dict:
    """vLLM (MXFP4, bf16) and transformers (dequantized, bf16) against the exact model (the same weights computed
    in fp32): greedy prefixes shared with it, and how often each one's argmax is the reference's next token when
    both read the reference's own tokens (teacher forcing), with the reference's top-2 spacing at each step."""
    ref, ref_s = agreement_run(spec, "fp32")
    runs = {"fp32": (ref, ref_s)} | {b: agreement_run(spec, b, ref["tokens"]) for b in ("vllm", "hf")}
    out = {"quantization": runs["vllm"][0]["quantization"],
           "reference_top2_spacing": [f["top2_spacing"] for f in ref["forced"]]}
    for name, (r, seconds) in runs.items():
        pairs = list(zip(r["tokens"], ref["tokens"], strict=True))
        out[name] = {"tokens": r["tokens"], "seconds": seconds,
                     "prefix_with_fp32": [agreed_prefix(mine, exact) for mine, exact in pairs]}
        if name != "fp32":
            forced = list(zip(r["forced"], ref["tokens"], strict=True))
            out[name]["forced_argmax_equal"] = [sum(x == y for x, y in zip(f["argmax"], exact, strict=True))
                                                for f, exact in forced]
            out[name]["forced_margin_to_fp32"] = [f["margin_to_reference"] for f in r["forced"]]
    vl, hf = runs["vllm"][0]["tokens"], runs["hf"][0]["tokens"]
    out["vllm"]["prefix_with_hf"] = [agreed_prefix(x, y) for x, y in zip(vl, hf, strict=True)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--qwen-layers", type=int, default=12)
    ap.add_argument("--gpt-layers", type=int, default=24)
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--agreement-only", action="store_true",
                    help="only the 75%% GPT-OSS specialist (applied once, untimed) and the vLLM/transformers agreement")
    ap.add_argument("--vocab", type=int, default=None, help="smaller vocabularies for a smoke run")
    ap.add_argument("--min-free-gb", type=float, default=30)
    ap.add_argument("--drops", default="0.5,0.75", help="plans to time, as fractions of experts dropped: 0.5")
    args = ap.parse_args()
    drops = tuple(float(x) for x in args.drops.split(","))
    if not args.skip_vllm and 0.75 not in drops:  # the vLLM comparison loads the 75% GPT-OSS specialist
        raise SystemExit("keep 0.75 in --drops, or --skip-vllm")
    args.work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.work).free
    print(f"free disk under {args.work}: {free / GB:.1f} GB", flush=True)
    if free < args.min_free_gb * GB:
        raise SystemExit("needs about 30 GB free: pass fewer --qwen-layers / --gpt-layers")
    results: dict = {}
    os.environ["MOE_CACHE_DIR"] = str(args.work / "hash-cache")  # the hashes plan creation keeps
    try:
        vocab = {"vocab_size": args.vocab} if args.vocab else {}
        gpt = {**GPT_OSS_20B, **vocab, "num_hidden_layers": args.gpt_layers,
               "layer_types": (["sliding_attention", "full_attention"] * args.gpt_layers)[: args.gpt_layers]}
        t = time.perf_counter()
        info = write_checkpoint(args.work / "gpt-oss-20b", gpt, gpt_oss_tensors(gpt), 4.6 * GB, zero_based=True)
        print(f"gpt-oss-20b-shaped: {info} written in {time.perf_counter() - t:.0f} s", flush=True)
        base, spec = args.work / "gpt-oss-20b", args.work / "gpt-oss-75"
        results["gpt_oss"] = {"checkpoint": info}
        if args.agreement_only:
            random_plan(base, 0.75).save(args.work / "gpt-oss-0.75.plan.json")
            run_apply(args.work / "gpt-oss-0.75.plan.json", spec, base, verify=False)
        else:
            results["gpt_oss"]["rows"] = measure("gpt-oss", base, info, args.work, keep_spec="75", drops=drops)
        shutil.rmtree(base)
        if not args.skip_vllm:
            results["gpt_oss"]["agreement"] = agreement(spec)
            print(json.dumps(results["gpt_oss"]["agreement"]), flush=True)
        shutil.rmtree(spec, ignore_errors=True)  # absent when --drops leaves 0.75 out
        if args.agreement_only:
            return
        qwen = {**QWEN3_30B_A3B, **vocab, "num_hidden_layers": args.qwen_layers, "max_window_layers": args.qwen_layers}
        t = time.perf_counter()
        info = write_checkpoint(args.work / "qwen3-30b-a3b", qwen, qwen3_tensors(qwen), 4.0 * GB, zero_based=False)
        print(f"qwen3-30b-a3b-shaped ({args.qwen_layers} layers): {info} in {time.perf_counter() - t:.0f} s",
              flush=True)
        results["qwen3_moe"] = {"checkpoint": info, "rows": measure("qwen3", args.work / "qwen3-30b-a3b", info,
                                                                      args.work, keep_spec=None, drops=drops)}
    finally:
        print(json.dumps(results, indent=1))
        for p in args.work.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()


if __name__ == "__main__":
    main()
