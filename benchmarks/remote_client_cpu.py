"""Gateway-side CPU per call of the two HTTP clients a remote engine could use, httpx and aiohttp: plain
(one JSON answer) and streamed (server-sent events, one per token) calls to /v1/completions, each client used
as ``service.engines.remote`` uses one (a long-lived client or session, the SSE lines parsed as JSON).

The server is a stand-in for ``vllm serve`` (aiohttp, in a process of its own, in its own session, killed
with it at the end): it answers at once, a streamed call with ``--tokens`` events ``--token-delay-ms`` apart
(so that each arrives in a read of its own, as tokens of a real engine do), then the usage event and
``[DONE]``. Only this process's CPU (``time.process_time``) is counted, on uvloop like uvicorn runs the
gateway. Per call kind and concurrency, rounds alternate the clients in ABBA order (drift hits both alike);
each pair of rounds gives one difference, and the table shows per-round medians with min..max and the
differences over the pairs.

    HF_HUB_OFFLINE=1 flock /tmp/heavy.lock .venv/bin/python benchmarks/remote_client_cpu.py --pin
    .venv/bin/python benchmarks/remote_client_cpu.py --concurrency 1 --rounds 4 --calls 100 --streams 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

CLIENTS = ("httpx", "aiohttp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int, tokens: int, token_delay_s: float) -> None:
    """The stand-in OpenAI completions server (runs until killed)."""
    from aiohttp import web

    def choice(text: str, finish: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def usage(prompt_tokens: int, n: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n, prompt_tokens = min(int(body.get("max_tokens") or tokens), tokens), len(body.get("prompt", "")) // 4
        head = {"id": "cmpl-bench", "object": "text_completion", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return web.json_response(head | {"choices": [choice(" Wort" * n, "length")],
                                             "usage": usage(prompt_tokens, n)})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i in range(n):
            event = head | {"choices": [choice(" Wort", "length" if i == n - 1 else None)], "usage": None}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(token_delay_s)
        await resp.write(f"data: {json.dumps(head | {'choices': [], 'usage': usage(prompt_tokens, n)})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


def parse_event(state: dict, line: str) -> bool:
    """One SSE line into ``state`` (text, tokens, usage) as the remote engine reads it: False at [DONE]."""
    if not line.startswith("data:"):
        return True
    data = line[5:].strip()
    if data == "[DONE]":
        return False
    event = json.loads(data)
    if u := event.get("usage"):
        state["tokens"] = u.get("completion_tokens", state["tokens"])
    for c in event.get("choices") or []:
        if c.get("text"):
            state["text"] += c["text"]
            state["tokens"] += 1
    return True


class HttpxClient:
    def __init__(self, url: str):
        import httpx

        self.client = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120, connect=10))

    async def plain(self, body: dict) -> str:
        resp = await self.client.post("/v1/completions", json=body)
        resp.raise_for_status()
        return resp.json()["choices"][0]["text"]

    async def stream(self, body: dict) -> str:
        state = {"text": "", "tokens": 0}
        async with self.client.stream("POST", "/v1/completions", json=body) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not parse_event(state, line):
                    break
        return state["text"]

    async def close(self) -> None:
        await self.client.aclose()


class AiohttpClient:
    def __init__(self, url: str):
        import aiohttp

        self.session = aiohttp.ClientSession(
            base_url=url + "/", timeout=aiohttp.ClientTimeout(total=120, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=0),
        )

    async def plain(self, body: dict) -> str:
        async with self.session.post("v1/completions", json=body) as resp:
            raw = await resp.read()
            resp.raise_for_status()
        return json.loads(raw)["choices"][0]["text"]

    async def stream(self, body: dict) -> str:
        state = {"text": "", "tokens": 0}
        async with self.session.post("v1/completions", json=body) as resp:
            resp.raise_for_status()
            async for raw in resp.content:
                if not parse_event(state, raw.decode().rstrip("\r\n")):
                    break
        return state["text"]

    async def close(self) -> None:
        await self.session.close()


def body(stream: bool, tokens: int) -> dict:
    prompt = ("<|im_start|>user\nTranslate from English to German:\nThe quick brown fox.<|im_end|>\n"
              "<|im_start|>assistant\n")
    out = {"model": "bench", "prompt": prompt, "max_tokens": tokens, "temperature": 0.0, "top_p": 1.0, "top_k": -1,
           "seed": None, "repetition_penalty": 1.0, "skip_special_tokens": False,
           "spaces_between_special_tokens": False, "add_special_tokens": False}
    return out | ({"stream": True, "stream_options": {"include_usage": True}} if stream else {})


async def cpu_ms_per_call(call: Callable[[dict], Awaitable[str]], request: dict, calls: int, concurrency: int,
                          expect: str) -> float:
    """CPU milliseconds of this process per call over ``calls`` calls, ``concurrency`` at a time."""

    async def worker(n: int) -> None:
        for _ in range(n):
            assert await call(request) == expect

    shares = [calls // concurrency + (i < calls % concurrency) for i in range(concurrency)]
    start = time.process_time()
    await asyncio.gather(*(worker(n) for n in shares))
    return (time.process_time() - start) * 1000 / calls


async def measure(url: str, args: argparse.Namespace) -> list[dict]:
    clients = {"httpx": HttpxClient(url), "aiohttp": AiohttpClient(url)}
    expect = " Wort" * args.tokens
    rows = []
    try:
        for kind, calls in (("plain", args.calls), ("stream", args.streams)):
            request = body(kind == "stream", args.tokens)
            for concurrency in args.concurrency:
                for c in clients.values():  # warm-up: connections, first-call costs
                    await cpu_ms_per_call(getattr(c, kind), request, max(calls // 10, concurrency), concurrency, expect)
                per_round: dict[str, list[float]] = {name: [] for name in CLIENTS}
                for r in range(args.rounds):
                    order = CLIENTS if r % 2 == 0 else CLIENTS[::-1]  # ABBA
                    for name in order:
                        per_round[name].append(
                            await cpu_ms_per_call(getattr(clients[name], kind), request, calls, concurrency, expect))
                rows.append({"kind": kind, "concurrency": concurrency, "calls": calls, "rounds": per_round})
                print(f"{kind:6s} c={concurrency:<3d} " + "  ".join(
                    f"{n} {statistics.median(v):.3f}" for n, v in per_round.items()), file=sys.stderr)
    finally:
        for c in clients.values():
            await c.close()
    return rows


def table(rows: list[dict]) -> str:
    out = ["| call | concurrency | calls per round x rounds | httpx CPU ms/call median [min, max] | "
           "aiohttp CPU ms/call median [min, max] | httpx - aiohttp per pair median [min, max] | "
           "pairs where aiohttp is cheaper |",
           "|---|---|---|---|---|---|---|"]
    for row in rows:
        h, a = row["rounds"]["httpx"], row["rounds"]["aiohttp"]
        diff = [x - y for x, y in zip(h, a, strict=True)]

        def cell(v: list[float]) -> str:
            return f"{statistics.median(v):.3f} [{min(v):.3f}, {max(v):.3f}]"

        out.append(f"| {row['kind']} | {row['concurrency']} | {row['calls']} x {len(h)} | {cell(h)} | {cell(a)} | "
                   f"{cell(diff)} | {sum(d > 0 for d in diff)} / {len(diff)} |")
    return "\n".join(out)


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the stand-in server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"the stand-in server did not listen on {port} within {timeout} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1000, help="plain calls per round")
    p.add_argument("--streams", type=int, default=200, help="streamed calls per round")
    p.add_argument("--tokens", type=int, default=16, help="tokens (events) per call")
    p.add_argument("--token-delay-ms", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=8, help="rounds per client (even: ABBA pairs)")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--pin", action="store_true", help="the server on the first CPU, this process on the others")
    p.add_argument("--json", help="also write the per-round numbers to this file")
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process's own entry
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.tokens, args.token_delay_ms / 1000)
        return

    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    server_cpus = set(cpus[:1]) if args.pin else None
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", str(port), "--tokens", str(args.tokens),
           "--token-delay-ms", str(args.token_delay_ms)]
    server = subprocess.Popen(cmd, start_new_session=True,
                              preexec_fn=(lambda: os.sched_setaffinity(0, server_cpus)) if server_cpus else None)
    try:
        wait_listening(port, server)
        if args.pin:
            os.sched_setaffinity(0, set(cpus[1:]))
        if args.loop == "uvloop":
            import uvloop

            rows = uvloop.run(measure(f"http://127.0.0.1:{port}", args))
        else:
            rows = asyncio.run(measure(f"http://127.0.0.1:{port}", args))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
    print(f"loop {args.loop}, {args.tokens} tokens per call ({args.token_delay_ms} ms apart when streamed), "
          f"pinned: {args.pin}")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
