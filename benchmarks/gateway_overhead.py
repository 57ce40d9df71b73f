"""Gateway overhead: the same load sent directly to a vLLM OpenAI server and through the gateway in front of
it (remote backend), at several concurrencies. Prints throughput (requests/s), the ratio gateway/direct, and
the latency the gateway adds (p50, p99). Goal (issue 5): ratio >= 0.95, added p50 <= 5 ms.

Both paths send the same prompt (``moe_specialists.models.prompts.render``) with greedy decoding and the same
max_tokens, so the engine does the same work; the difference is the gateway's HTTP hop, routing, admission and
extraction.

    python benchmarks/gateway_overhead.py                       # the bundled tiny translator on the CPU
    python benchmarks/gateway_overhead.py --model /models/en-de --concurrency 1 4 16 --requests 200
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


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
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
    """Run ``requests`` calls of ``send`` with ``concurrency`` workers: (requests/s, latencies in s)."""
    latencies: list[float] = []
    todo = iter(range(requests))

    async def worker() -> None:
        for _ in todo:
            t = time.perf_counter()
            await send()
            latencies.append(time.perf_counter() - t)

    start_t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - start_t), latencies


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


async def bench(direct_url: str, gateway_url: str, prompt: str, args: argparse.Namespace) -> list[dict]:
    limits = httpx.Limits(max_connections=max(args.concurrency) * 2)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        model = (await client.get(f"{direct_url}/v1/models")).json()["data"][0]["id"]

        async def direct() -> None:
            body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
                    "add_special_tokens": False, "skip_special_tokens": False}
            (await client.post(f"{direct_url}/v1/completions", json=body)).raise_for_status()

        async def gateway() -> None:
            body = {"text": TEXT, "source": "en", "target": "de", "max_tokens": args.max_tokens}
            (await client.post(f"{gateway_url}/v1/translate", json=body)).raise_for_status()

        for send in (direct, gateway):  # warm-up
            await load(send, 2, 4)
        rows = []
        for c in args.concurrency:
            # Alternate the two paths in rounds, so drifting background load hits both alike.
            d_time = g_time = 0.0
            d_lat: list[float] = []
            g_lat: list[float] = []
            per_round = max(args.requests // args.rounds, c)
            for _ in range(args.rounds):
                rps, lat = await load(direct, c, per_round)
                d_time, d_lat = d_time + per_round / rps, d_lat + lat
                rps, lat = await load(gateway, c, per_round)
                g_time, g_lat = g_time + per_round / rps, g_lat + lat
            d_rps, g_rps = len(d_lat) / d_time, len(g_lat) / g_time
            rows.append({
                "concurrency": c, "direct_rps": d_rps, "gateway_rps": g_rps, "ratio": g_rps / d_rps,
                "direct_p50_ms": 1e3 * pct(d_lat, 50), "gateway_p50_ms": 1e3 * pct(g_lat, 50),
                "added_p50_ms": 1e3 * (pct(g_lat, 50) - pct(d_lat, 50)),
                "added_p99_ms": 1e3 * (pct(g_lat, 99) - pct(d_lat, 99)),
            })
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the bundled tiny translator)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level and path")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="alternating direct/gateway rounds per level")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from moe_specialists.models.prompts import render
    from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    model = args.model or str(BUNDLED_MODEL_DIR)
    prompt = render(AutoTokenizer.from_pretrained(model), "en", "de", TEXT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    vport, gport = free_port(), free_port()
    server = start([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                    "--host", "127.0.0.1", "--port", str(vport), "--enforce-eager", "--max-model-len", "1024"],
                   env, work / "vllm.log")
    gateway = None
    try:
        wait_http(f"http://127.0.0.1:{vport}/health", server, work / "vllm.log")
        spec = {"name": "bench", "path": f"http://127.0.0.1:{vport}", "directions": ["en-de"]}
        genv = {**env, "MOE_SPECIALISTS": json.dumps([spec]), "MOE_PORT": str(gport),
                "MOE_MAX_QUEUE_PER_ENGINE": "100000",
                "MOE_ACCESS_LOG": "false", "MOE_MAX_TOKENS_LIMIT": str(max(args.max_tokens, 1024))}
        gateway = start([sys.executable, "-m", "moe_specialists.service.cli"], genv, work / "gateway.log")
        wait_http(f"http://127.0.0.1:{gport}/readyz", gateway, work / "gateway.log")
        rows = asyncio.run(bench(f"http://127.0.0.1:{vport}", f"http://127.0.0.1:{gport}", prompt, args))
    finally:
        for proc in (gateway, server):
            if proc is not None:
                stop(proc)

    print(f"model {model}, {args.requests} requests per level, max_tokens {args.max_tokens}")
    print(f"{'conc':>4} {'direct rps':>10} {'gateway rps':>11} {'ratio':>6} {'p50 direct ms':>13} "
          f"{'p50 gw ms':>9} {'added p50 ms':>12} {'added p99 ms':>12}")
    for r in rows:
        print(f"{r['concurrency']:>4} {r['direct_rps']:>10.1f} {r['gateway_rps']:>11.1f} {r['ratio']:>6.3f} "
              f"{r['direct_p50_ms']:>13.1f} {r['gateway_p50_ms']:>9.1f} {r['added_p50_ms']:>12.1f} "
              f"{r['added_p99_ms']:>12.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
