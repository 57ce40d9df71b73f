"""Memory of the bundled tiny translator vs its pruned specialists, each loaded in vLLM.

One calibration pass (routing mass, en<->{de,fr,ru,es,cs}, no REAP) gives the statistics; one plan per
``--drops`` value (experts dropped per layer on average, of 32) is applied to the base in a temporary folder.
Then, one engine at a time (eager, engine core in its own process, shut down before the next), the base and
each specialist are loaded in vLLM and measured:

  * weight bytes as vLLM holds them (``EngineMemoryProbe.model_weight_bytes``: parameters plus the dense
    linears the CPU backend repacked into oneDNN handles; buffers such as RoPE caches apart);
  * the KV cache vLLM allocated (``EngineMemoryProbe.engine_memory()["kv_cache"]``; on the CPU its size is set
    by VLLM_CPU_KVCACHE_SPACE, not by what the weights leave free);
  * resident memory (RSS) of the engine's processes (engine core and worker), after one short generation, and
    the worker's RSS before and after ``malloc_trim(0)``.

Printed per model, as markdown: experts kept, checkpoint parameters, kept-parameter fraction, vLLM weight
bytes, memory ratio vs the base, |ratio - fraction| (goal <= 0.02 of the base), how many specialists fit in one
base's weight memory (floor(base / specialist)), KV cache and RSS.

    python benchmarks/specialist_memory.py [--drops 8 16 24] [--calib-limit 50] [--stats stats.safetensors]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# collective_rpc(worker_memory) ships a function to the worker: vLLM then needs pickle on its local engine sockets
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

from moe_specialists.models.generation import vllm_engine  # noqa: E402
from moe_specialists.models.random_tiny import TINY_ENGINE  # noqa: E402
from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR  # noqa: E402
from moe_specialists.pruning.collect_vllm import WORKER_EXTENSION  # noqa: E402

GOAL = 0.02  # |memory ratio - kept-parameter fraction|, as a fraction of the base
MIB = 2**20


def checkpoint_parameters(path: Path) -> dict[str, int]:
    """Parameters of a checkpoint folder: all, expert tensors, router rows, and experts kept (over all layers)."""
    from moe_specialists.models.adapters import adapter_for
    from moe_specialists.models.checkpoint import header_entries, read_config, weight_totals

    config = read_config(path)
    adapter = adapter_for(config)
    entries = list(header_entries(path))

    def kind(name: str) -> str | None:
        role = adapter.tensor_role(name)
        return None if role is None else "router" if role.kind == "router" else "expert"

    return {
        "parameters": weight_totals(entries)[0],
        "expert": weight_totals(entries, lambda name, _: kind(name) == "expert")[0],
        "router": weight_totals(entries, lambda name, _: kind(name) == "router")[0],
        "experts_kept": sum(adapter.experts_per_layer(config)),
    }


def build_specialists(tmp: Path, drops: list[int], stats_path: Path | None, data: Path, languages: list[str],
                      limit: int) -> tuple[dict[str, Path], float]:
    """{name: folder} of the specialists, from one calibration pass (or the given statistics)."""
    from moe_specialists.models.apply import apply_plan
    from moe_specialists.models.plan import Recipe
    from moe_specialists.pruning.calibrate import CalibrationConfig, calibrate
    from moe_specialists.pruning.plan import make_plan
    from moe_specialists.pruning.stats import RoutingStats

    t = time.perf_counter()
    if stats_path is None or not stats_path.exists():
        config = CalibrationConfig(model=BUNDLED_MODEL_DIR, data_dir=data, languages=languages, direction="both",
                                   out=stats_path or tmp / "stats.safetensors", limit=limit, reap=False)
        stats_path = calibrate(config)
    stats = RoutingStats.load(stats_path)
    out = {}
    for drop in drops:
        recipe = Recipe(ranking="routing-mass", allocation="dynamic", drop=drop, directions=sorted(stats.groups))
        plan = make_plan(stats, recipe)
        out[f"drop {drop}"] = apply_plan(plan, tmp / f"drop{drop}", base=BUNDLED_MODEL_DIR)
    return out, time.perf_counter() - t


def engine_rss(before: set[int]) -> int | None:
    """Summed RSS of the processes the engine started (children of this process that were not there before it;
    the multiprocessing resource tracker left out)."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0
    for p in psutil.Process().children(recursive=True):
        if p.pid in before:
            continue
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                total += p.memory_info().rss
        except psutil.Error:
            continue
    return total or None


def worker_memory(worker: Any) -> dict[str, int]:
    """Run inside the vLLM worker (``collective_rpc`` with a function): its RSS, the file-backed part (mmapped
    libraries), and its RSS after glibc's ``malloc_trim(0)`` hands freed heap pages back to the OS (the copies
    made while loading and repacking the weights are freed but stay resident until then)."""
    import ctypes

    import psutil

    proc = psutil.Process()
    mem = proc.memory_info()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        trimmed = proc.memory_info().rss
    except (OSError, AttributeError):  # not glibc
        trimmed = mem.rss
    return {"rss": mem.rss, "file": getattr(mem, "shared", 0), "trimmed": trimmed}


def measure(path: Path, dtype: str) -> dict[str, Any]:
    import psutil
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    t = time.perf_counter()
    engine = {**TINY_ENGINE, "dtype": dtype, "worker_extension_cls": WORKER_EXTENSION}
    with vllm_engine(path, False, **engine) as llm:
        startup = time.perf_counter() - t
        out = llm.generate([TokensPrompt(prompt_token_ids=list(range(10, 42)))],
                           SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 8
        weights = llm.collective_rpc("model_weight_bytes")[0]
        kv = llm.collective_rpc("engine_memory")[0]["kv_cache"]
        rss = engine_rss(before)
        worker = llm.collective_rpc(worker_memory)[0]
        model_dtype = str(llm.llm_engine.vllm_config.model_config.dtype).removeprefix("torch.")
    return {**weights, "kv_cache_bytes": kv, "rss": rss, "worker": worker, "startup_s": startup,
            "dtype": model_dtype}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drops", type=int, nargs="+", default=[8, 16, 24], help="experts dropped per layer (of 32)")
    ap.add_argument("--stats", type=Path,
                    help="routing statistics: reused if the file exists, else calibrated and saved there")
    ap.add_argument("--data", default="flores+", help="parallel data: flores+, sample or a FLORES-style folder")
    ap.add_argument("--languages", default="de,fr,ru,es,cs")
    ap.add_argument("--calib-limit", type=int, default=50, help="calibration passages per direction")
    ap.add_argument("--dtype", default="auto", help="vLLM dtype (auto: the checkpoint's bfloat16, as the gateway)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        specialists, build_s = build_specialists(Path(tmp), args.drops, args.stats, args.data,
                                                 args.languages.split(","), args.calib_limit)
        models = {"base": BUNDLED_MODEL_DIR, **specialists}
        rows = []
        for name, path in models.items():
            ckpt = checkpoint_parameters(path)
            print(f"[{name}] starting vLLM on {path}", file=sys.stderr, flush=True)
            rows.append((name, ckpt, measure(path, args.dtype)))

    _, ck0, base = rows[0]
    params0 = ck0["parameters"]
    expert_share = ck0["expert"] / params0
    prunable = (ck0["expert"] + ck0["router"]) / params0
    print(f"\nbundled tiny translator ({ck0['experts_kept']} experts: 8 layers x 32, top-4), vLLM {base['dtype']}, "
          f"eager. Experts are {100 * expert_share:.1f}% of its {params0:,} checkpoint parameters, "
          f"{100 * prunable:.1f}% with their router rows (pruned with them): dropping a fraction d of the experts "
          f"leaves 1 - {prunable:.4f} d of the parameters (d = 1/4, 1/2, 3/4: "
          f"{', '.join(f'{1 - prunable * d:.4f}' for d in (0.25, 0.5, 0.75))}), the theoretical memory ratio.\n")
    print("| model | experts kept | checkpoint params | kept-param fraction | vLLM weights MiB | memory ratio "
          "| \\|ratio - fraction\\| | fit in one base | KV cache MiB | engine RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ck, m in rows:
        fraction = ck["parameters"] / params0
        ratio = m["parameter_bytes"] / base["parameter_bytes"]
        miss = abs(ratio - fraction)
        verdict = "ok" if miss <= GOAL else "MISSES"
        fits = math.floor(base["parameter_bytes"] / m["parameter_bytes"])
        rss = f"{m['rss'] / MIB:.0f}" if m["rss"] else "–"
        print(f"| {name} | {ck['experts_kept']}/{ck0['experts_kept']} | {ck['parameters']:,} | {fraction:.4f} "
              f"| {m['parameter_bytes'] / MIB:.2f} | {ratio:.4f} | {miss:.4f} ({verdict}) | {fits} "
              f"| {m['kv_cache_bytes'] / MIB:.0f} | {rss} |")
    print("\nper engine, MiB: packed oneDNN linears (inside the weights), buffers (RoPE caches, not pruned); the "
          "worker's RSS (file-backed part), its change vs the base, the same after malloc_trim(0), next to the "
          "change of the weights; start-up s")
    for name, _, m in rows:
        w, w0 = m["worker"], base["worker"]
        dweights = (m["parameter_bytes"] - base["parameter_bytes"]) / MIB
        print(f"  {name:8} packed {m['packed_linear_bytes'] / MIB:5.2f}  buffers {m['buffer_bytes'] / MIB:5.2f}  "
              f"worker RSS {w['rss'] / MIB:6.0f} (file {w['file'] / MIB:4.0f})  "
              f"change {(w['rss'] - w0['rss']) / MIB:+6.1f}"
              f"  trimmed {(w['trimmed'] - w0['trimmed']) / MIB:+6.1f}  weights {dweights:+6.1f}  "
              f"start-up {m['startup_s']:5.1f}")
    print(f"\nbuild (calibration + plans + apply) {build_s:.0f} s, total {time.perf_counter() - t0:.0f} s, "
          f"{datetime.date.today()}, base = {BUNDLED_MODEL_DIR}")


if __name__ == "__main__":
    main()
