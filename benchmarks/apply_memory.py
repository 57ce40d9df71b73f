"""Peak memory of `apply` on a multi-shard checkpoint: it streams shard by shard, so the peak RSS should
stay near one shard, not the whole model.

    python benchmarks/apply_memory.py [--layers 8] [--experts 32] [--hidden 512]

Builds a GPT-OSS-layout checkpoint of random fp32 tensors (one shard per layer), applies a 50% plan in a
fresh process, and compares its peak RSS with the same process doing everything but the slicing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, json, resource
from pathlib import Path
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.plan import Plan
plan = Plan.load(sys.argv[1])
if sys.argv[3] == "apply":
    apply_plan(plan, Path(sys.argv[2]), verify=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def build(folder: Path, layers: int, experts: int, hidden: int) -> None:
    import torch
    from safetensors.torch import save_file

    inter = hidden
    config = {
        "model_type": "gpt_oss",
        "architectures": ["GptOssForCausalLM"],
        "num_hidden_layers": layers,
        "num_local_experts": experts,
        "num_experts_per_tok": 4,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "vocab_size": 1024,
    }
    (folder / "config.json").write_text(json.dumps(config))
    weight_map = {}
    for i in range(layers):
        p = f"model.layers.{i}.mlp."
        shard = {
            p + "experts.gate_up_proj": torch.randn(experts, hidden, 2 * inter),
            p + "experts.gate_up_proj_bias": torch.randn(experts, 2 * inter),
            p + "experts.down_proj": torch.randn(experts, inter, hidden),
            p + "experts.down_proj_bias": torch.randn(experts, hidden),
            p + "router.weight": torch.randn(experts, hidden),
            p + "router.bias": torch.randn(experts),
            f"model.layers.{i}.input_layernorm.weight": torch.ones(hidden),
        }
        name = f"model-{i:05d}.safetensors"
        save_file(shard, folder / name)
        weight_map.update({k: name for k in shard})
        del shard
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def peak_rss(plan: Path, out: Path, mode: str) -> int:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(plan), str(out), mode], capture_output=True, text=True, check=True
    )
    return int(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=512)
    args = ap.parse_args()
    from moe_specialists.models.plan import plan_from_kept

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        build(base, args.layers, args.experts, args.hidden)
        plan = plan_from_kept(base, [list(range(0, args.experts, 2))] * args.layers)
        plan_path = plan.save(Path(tmp) / "plan.json")
        sizes = [p.stat().st_size for p in base.glob("*.safetensors")]
        baseline = peak_rss(plan_path, Path(tmp) / "unused", "load-only")
        peak = peak_rss(plan_path, Path(tmp) / "spec", "apply")
        mib = 1 << 20
        rows = [
            ("checkpoint total", sum(sizes) / mib),
            ("largest shard", max(sizes) / mib),
            ("peak RSS, apply", peak / mib),
            ("peak RSS, same process without slicing", baseline / mib),
            ("apply's own peak (difference)", (peak - baseline) / mib),
        ]
        print(f"{'quantity':42s} {'MiB':>10s}")
        for name, v in rows:
            print(f"{name:42s} {v:10.1f}")
        print(f"\napply's own peak / largest shard = {(peak - baseline) / max(sizes):.2f}")
        print(f"apply's own peak / checkpoint    = {(peak - baseline) / sum(sizes):.3f}")
        print(f"peak RSS / largest shard         = {peak / max(sizes):.2f}   (includes Python + torch)")
        print(f"peak RSS / checkpoint            = {peak / sum(sizes):.3f}")


if __name__ == "__main__":
    main()
