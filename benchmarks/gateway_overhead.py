"""Gateway overhead: the same load sent directly to a vLLM OpenAI server and through the gateway in front of
it (remote backend), at several concurrencies. Goals (issue 14): throughput ratio gateway/direct >= 0.98 at
concurrency 1, 4 and 16, added p50 <= 5 ms, with the spread between rounds shown.

Both paths send the same prompt (``moe_specialists.models.prompts.render``) with greedy decoding and the same
max_tokens, so the engine does the same work; the difference is the gateway's HTTP hop, routing, admission and
extraction. Per level, rounds alternate direct/gateway in ABBA order (so that drift hits both alike); each
pair of rounds gives one ratio and one added p50, and the table shows their median and spread (min..max over
the pairs) next to the pooled values. The gateway's own CPU per request is read from its
``process_cpu_seconds_total`` over the gateway rounds; ``--profile FILE`` runs the gateway under cProfile
(slower: profile runs are not for the table) and prints where its CPU goes.

    python benchmarks/gateway_overhead.py                       # the bundled tiny translator on the CPU
    python benchmarks/gateway_overhead.py --pin                 # vLLM / gateway + client on separate CPUs
    python benchmarks/gateway_overhead.py --model /models/en-de --requests 200 400 800 --rounds 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT = "The quick brown fox jumps over the lazy dog near the river bank."


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str], log: Path, cpus: set[int] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (its children too), on ``cpus`` when given."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=pin)


def split_cpus() -> tuple[set[int], set[int]]:
    """This machine's CPUs in two halves: (vLLM server and engine, gateway and load client)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[:4]} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} not ready after {timeout} s")


async def load(send, concurrency: int, requests: int) -> tuple[float, list[float]]:
    """Run ``requests`` calls of ``send`` with ``concurrency`` workers: (seconds, latencies in s)."""
    latencies: list[float] = []
    todo = iter(range(requests))

    async def worker() -> None:
        for _ in todo:
            t = time.perf_counter()
            await send()
            latencies.append(time.perf_counter() - t)

    start_t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start_t, latencies


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def summarise(concurrency: int, pairs: list[dict], cpu_s: float) -> dict:
    """One table row from the rounds of a level: pooled throughput and percentiles, and the median and spread
    (min, max) of the per-pair ratios and added p50s."""
    d_lat = [x for p in pairs for x in p["d_lat"]]
    g_lat = [x for p in pairs for x in p["g_lat"]]
    d_rps = len(d_lat) / sum(p["d_s"] for p in pairs)
    g_rps = len(g_lat) / sum(p["g_s"] for p in pairs)
    ratios = [(len(p["g_lat"]) / p["g_s"]) / (len(p["d_lat"]) / p["d_s"]) for p in pairs]
    added = [1e3 * (statistics.median(p["g_lat"]) - statistics.median(p["d_lat"])) for p in pairs]
    return {
        "concurrency": concurrency, "requests": len(g_lat), "rounds": len(pairs),
        "direct_rps": d_rps, "gateway_rps": g_rps, "ratio": g_rps / d_rps,
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "direct_p50_ms": 1e3 * pct(d_lat, 50), "gateway_p50_ms": 1e3 * pct(g_lat, 50),
        "added_p50_ms": 1e3 * (pct(g_lat, 50) - pct(d_lat, 50)),
        "added_p50_median_ms": statistics.median(added), "added_p50_min_ms": min(added),
        "added_p50_max_ms": max(added),
        "added_p99_ms": 1e3 * (pct(g_lat, 99) - pct(d_lat, 99)),
        "gateway_cpu_ms_per_request": 1e3 * cpu_s / len(g_lat),
        "pair_ratios": [round(r, 4) for r in ratios], "pair_added_p50_ms": [round(a, 2) for a in added],
        "pair_seconds": [[round(p["d_s"], 3), round(p["g_s"], 3)] for p in pairs],
    }


async def cpu_seconds(client: httpx.AsyncClient, gateway_url: str) -> float:
    """The gateway process's CPU seconds so far (its own /metrics)."""
    text = (await client.get(f"{gateway_url}/metrics")).text
    return float(next(line for line in text.splitlines() if line.startswith("process_cpu_seconds_total ")).split()[1])


async def bench(direct_url: str, gateway_url: str, prompt: str, args: argparse.Namespace) -> list[dict]:
    n = max(args.concurrency) * 2
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        model = (await client.get(f"{direct_url}/v1/models")).json()["data"][0]["id"]
        direct_body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
                       "add_special_tokens": False, "skip_special_tokens": False,
                       "spaces_between_special_tokens": False}
        gateway_body = {"text": TEXT, "source": "en", "target": "de", "max_tokens": args.max_tokens}

        async def direct() -> None:
            (await client.post(f"{direct_url}/v1/completions", json=direct_body)).raise_for_status()

        async def gateway() -> None:
            (await client.post(f"{gateway_url}/v1/translate", json=gateway_body)).raise_for_status()

        for send in (direct, gateway):  # warm-up: connections, caches
            await load(send, max(args.concurrency), 2 * max(args.concurrency))
        rows = []
        counts = args.requests if len(args.requests) == len(args.concurrency) else args.requests * len(args.concurrency)
        for c, requests in zip(args.concurrency, counts, strict=True):
            per_round = max(requests // args.rounds, c)
            pairs, cpu = [], 0.0
            for i in range(args.rounds):
                pair: dict = {}
                order = ("d", "g") if i % 2 == 0 else ("g", "d")  # ABBA: drift hits both paths alike
                for path in order:
                    if path == "d":
                        pair["d_s"], pair["d_lat"] = await load(direct, c, per_round)
                    else:
                        before = await cpu_seconds(client, gateway_url)
                        pair["g_s"], pair["g_lat"] = await load(gateway, c, per_round)
                        cpu += await cpu_seconds(client, gateway_url) - before
                pairs.append(pair)
            rows.append(summarise(c, pairs, cpu))
            print(f"  concurrency {c}: done", file=sys.stderr)
        return rows


def print_table(rows: list[dict], args: argparse.Namespace, model: str) -> None:
    pinned = ", vLLM / gateway+client on separate CPUs (--pin)" if args.pin else ""
    print(f"model {model}, max_tokens {args.max_tokens}, {args.rounds} rounds per level (ABBA){pinned}")
    print("| concurrency | requests per path | direct req/s | gateway req/s | ratio (pooled) | ratio median "
          "[min, max] over pairs | p50 direct ms | p50 gateway ms | added p50 ms (pooled) | added p50 median "
          "[min, max] ms | added p99 ms | gateway CPU ms/request |")
    print("|" + "---|" * 12)
    for r in rows:
        print(f"| {r['concurrency']} | {r['requests']} | {r['direct_rps']:.2f} | {r['gateway_rps']:.2f} | "
              f"{r['ratio']:.3f} | {r['ratio_median']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}] | "
              f"{r['direct_p50_ms']:.1f} | {r['gateway_p50_ms']:.1f} | {r['added_p50_ms']:.1f} | "
              f"{r['added_p50_median_ms']:.1f} [{r['added_p50_min_ms']:.1f}, {r['added_p50_max_ms']:.1f}] | "
              f"{r['added_p99_ms']:.1f} | {r['gateway_cpu_ms_per_request']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the bundled tiny translator)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, nargs="+", default=[240, 480, 960],
                        help="requests per path at each concurrency level (one number: the same for all)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8, help="alternating direct/gateway rounds per level (even)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--pin", action="store_true", help="vLLM (server and engine) on the first half of the "
                        "CPUs, the gateway and the load client on the other half: the gateway then costs the "
                        "engine no CPU, as on a GPU node where it has cores of its own")
    parser.add_argument("--profile", type=Path, help="run the gateway under cProfile, write its stats here and "
                        "print the top functions (the table is then not a fair measurement)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from moe_specialists.models.prompts import render
    from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    model = args.model or str(BUNDLED_MODEL_DIR)
    prompt = render(AutoTokenizer.from_pretrained(model), "en", "de", TEXT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    env = {k: v for k, v in env.items() if not k.startswith("MOE_")}
    vport, gport = free_port(), free_port()
    server_cpus, front_cpus = split_cpus() if args.pin else (None, None)
    if args.pin:
        os.sched_setaffinity(0, front_cpus)  # the load client
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, sorted(server_cpus)))  # vLLM binds its threads
    server = start([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                    "--host", "127.0.0.1", "--port", str(vport), "--enforce-eager", "--max-model-len", "1024"],
                   env, work / "vllm.log", server_cpus)
    gateway = None
    try:
        wait_http(f"http://127.0.0.1:{vport}/health", server, work / "vllm.log")
        spec = {"name": "bench", "path": f"http://127.0.0.1:{vport}", "directions": ["en-de"]}
        genv = {**env, "MOE_SPECIALISTS": json.dumps([spec]), "MOE_PORT": str(gport),
                "MOE_MAX_QUEUE_PER_ENGINE": "100000",
                "MOE_ACCESS_LOG": "false", "MOE_MAX_TOKENS_LIMIT": str(max(args.max_tokens, 1024))}
        profile = ["-m", "cProfile", "-o", str(args.profile.resolve())] if args.profile else []
        gateway = start([sys.executable, *profile, "-m", "moe_specialists.service.cli"], genv, work / "gateway.log",
                        front_cpus)
        wait_http(f"http://127.0.0.1:{gport}/readyz", gateway, work / "gateway.log")
        rows = asyncio.run(bench(f"http://127.0.0.1:{vport}", f"http://127.0.0.1:{gport}", prompt, args))
    finally:
        if gateway is not None:
            stop(gateway, signal.SIGINT)  # SIGINT: cProfile writes its stats on the way out
        stop(server)

    print_table(rows, args, model)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.profile:
        import pstats

        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
