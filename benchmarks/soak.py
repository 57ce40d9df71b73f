"""Soak: the gateway serving the bundled specialists under a fixed request rate for a bounded time (locust as a
library, loopback only), optionally with one engine killed in the middle.

Prints requests, responses by status (and how many 429/503 carried Retry-After), requests that hung (no answer
within --timeout), p50/p99 latency of the 200s, the gateway process's RSS at the start (after warm-up) and at the
end, and with --kill-at: when the engine died, when /readyz was all ready again, and what was answered meanwhile.
Goals (issue 14): 0 5xx other than 503-with-Retry-After during an outage, RSS growth < 5%, 0 hung requests.

    python benchmarks/soak.py --minutes 10 --rate 4                  # plain soak
    python benchmarks/soak.py --minutes 5 --rate 4 --kill-at 120      # kill an engine-core process at t=120 s
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
from locust import HttpUser, constant_throughput, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402

TEXTS = [("en", "de", "The children are playing in the garden."), ("en", "fr", "The train leaves at seven."),
         ("de", "en", "Wir fahren morgen nach Berlin."), ("en", "es", "The museum opens on Monday.")]


class Record:
    """What came back: status counts, latencies of the 200s, Retry-After on 429/503, per-second timeline."""

    def __init__(self) -> None:
        self.status: Counter[str] = Counter()
        self.retry_after: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # what a request without an HTTP answer raised
        self.by_pair: Counter[str] = Counter()  # "en-de 200" -> count
        self.latencies_ms: list[float] = []
        self.timeline: list[tuple[float, str]] = []
        self.t0 = time.monotonic()

    def on_request(self, name, response_time, response=None, exception=None, **_) -> None:
        status = "hung" if _timed_out(exception) else str(getattr(response, "status_code", 0) or "error")
        self.status[status] += 1
        self.by_pair[f"{name} {status}"] += 1
        self.timeline.append((time.monotonic() - self.t0, status))
        if status == "200":
            self.latencies_ms.append(response_time)
        elif status in ("error", "hung"):
            self.errors[f"{type(exception).__name__}: {exception}"[:200]] += 1
        elif status in ("429", "503") and response is not None and response.headers.get("Retry-After"):
            self.retry_after[status] += 1


def _timed_out(exception) -> bool:
    return isinstance(exception, requests.exceptions.Timeout) or "timed out" in str(exception or "").lower()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def make_user(timeout: float, rate_per_user: float) -> type[HttpUser]:
    numbers = itertools.count()

    class Translator(HttpUser):
        """User i sends TEXTS[i % len(TEXTS)]: every pair (and so every bundled specialist) gets its share."""

        wait_time = constant_throughput(rate_per_user)

        def on_start(self) -> None:
            self.pair = TEXTS[next(numbers) % len(TEXTS)]

        @task
        def translate(self) -> None:
            source, target, text = self.pair
            self.client.post("/v1/translate", json={"text": text, "source": source, "target": target,
                                                    "max_tokens": 48}, timeout=timeout, name=f"{source}-{target}")

    return Translator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_cores(gateway: psutil.Process) -> list[psutil.Process]:
    """The vLLM engine-core processes under the gateway (one per in-process engine), oldest first."""
    found = [p for p in gateway.children(recursive=True) if "EngineCore" in " ".join(_names(p))]
    return sorted(found, key=lambda p: p.create_time())


def _names(p: psutil.Process) -> list[str]:
    try:
        return [p.name(), *p.cmdline()]
    except psutil.Error:
        return []


def not_ready(url: str) -> set[str]:
    """The specialists /readyz lists in any state but ready."""
    try:
        engines = requests.get(f"{url}/readyz", timeout=2).json().get("specialists", {})
    except (requests.RequestException, ValueError):
        return set()
    return {name for name, e in engines.items() if e.get("state") != "ready"}


def readiness(url: str) -> str:
    """/readyz's status: "ready" (every specialist), "degraded", "not ready", or "down" (no answer)."""
    try:
        return requests.get(f"{url}/readyz", timeout=2).json().get("status", "down")
    except (requests.RequestException, ValueError):
        return "down"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=4.0, help="requests per second, all users together")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--timeout", type=float, default=60.0, help="a request with no answer by then has hung")
    p.add_argument("--kill-at", type=float, help="seconds into the run: SIGKILL an engine-core process")
    p.add_argument("--kill-index", type=int, default=0, help="which engine core, oldest first (0: the oldest)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    max_requests = int(args.rate * args.minutes * 60 * 1.2) + 10  # the bound on what is sent

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="soak-")) / "gateway.log"
    env = {**os.environ, "MOE_PORT": str(port), "MOE_HOST": "127.0.0.1", "MOE_ACCESS_LOG": "false",
           "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moe_specialists.service.cli"], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    gateway = psutil.Process(proc.pid)
    record = Record()
    try:
        deadline = time.monotonic() + 600
        while readiness(url) != "ready":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the gateway did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        for source, target, text in TEXTS:  # warm-up, not counted
            requests.post(f"{url}/v1/translate", json={"text": text, "source": source, "target": target}, timeout=60)
        rss_start = gateway.memory_info().rss

        env_locust = Environment(user_classes=[make_user(args.timeout, args.rate / args.users)], host=url,
                                 events=events)
        events.request.add_listener(record.on_request)
        runner = env_locust.create_local_runner()
        record.t0 = time.monotonic()
        runner.start(args.users, spawn_rate=args.users)
        killed_at = degraded_at = recovered_at = None
        down: set[str] = set()  # specialists /readyz reported not ready after the kill
        end = record.t0 + args.minutes * 60
        while time.monotonic() < end and sum(record.status.values()) < max_requests:
            now = time.monotonic() - record.t0
            if args.kill_at is not None and killed_at is None and now >= args.kill_at:
                cores = engine_cores(gateway)
                if not cores:
                    raise SystemExit("no engine-core process found under the gateway")
                cores[args.kill_index].send_signal(signal.SIGKILL)
                killed_at = now
            elif killed_at is not None and recovered_at is None:
                state = readiness(url)
                down |= not_ready(url)
                if degraded_at is None and state != "ready":
                    degraded_at = now
                elif degraded_at is not None and state == "ready":
                    recovered_at = now
            gevent.sleep(1)
        runner.quit()
        rss_end = gateway.memory_info().rss
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    outage = [s for t, s in record.timeline if killed_at is not None and killed_at <= t <= (recovered_at or 1e9)]
    result = {
        "minutes": args.minutes, "rate": args.rate, "requests": sum(record.status.values()),
        "status": dict(record.status), "retry_after": dict(record.retry_after), "errors": dict(record.errors),
        "by_pair": dict(sorted(record.by_pair.items())),
        "not_200_at_s": [round(t, 1) for t, status in record.timeline if status != "200"][:50],
        "p50_ms": percentile(record.latencies_ms, 50) if record.latencies_ms else None,
        "p99_ms": percentile(record.latencies_ms, 99) if record.latencies_ms else None,
        "rss_start_mib": rss_start / 2**20, "rss_end_mib": rss_end / 2**20,
        "rss_growth": rss_end / rss_start - 1,
        "killed_at_s": killed_at, "killed_specialists": sorted(down), "degraded_at_s": degraded_at,
        "recovered_at_s": recovered_at,
        "during_outage": dict(Counter(outage)),
    }
    print(f"{result['requests']} requests in {args.minutes:g} min at {args.rate:g}/s; by status {result['status']}; "
          f"Retry-After on {result['retry_after']}")
    print(f"by pair and status: {result['by_pair']}")
    for error, n in record.errors.items():
        print(f"  {n} x {error}")
    if result["not_200_at_s"]:
        print(f"answers other than 200 at (s into the run): {result['not_200_at_s']}")
    print(f"latency of the 200s: p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms")
    print(f"gateway RSS {result['rss_start_mib']:.0f} -> {result['rss_end_mib']:.0f} MiB "
          f"({100 * result['rss_growth']:+.1f}%)")
    if killed_at is not None:
        print(f"engine of {sorted(down) or '?'} killed at {killed_at:.0f} s, /readyz not all ready from "
              f"{'never' if degraded_at is None else f'{degraded_at:.0f} s'}, all ready again at "
              f"{'never' if recovered_at is None else f'{recovered_at:.0f} s'}; during the outage: "
              f"{result['during_outage']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
