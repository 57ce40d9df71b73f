"""Long texts and the translation cache through the gateway (issue 26, docs/results/documents.md).

Starts ``moe-specialists serve`` as ``make serve`` does (the bundled tiny translator's specialists, vLLM on the
CPU) twice on loopback, requests from one kept-alive connection:

1. article vs batch (no cache): an article of ``--paragraphs`` paragraphs of three sentences, sent as ONE text,
   against the same sentences sent as one batch of texts, alternating ABBA for ``--rounds``. Goal: the article
   takes <= 1.1x the batch's time, with the same outputs. The degenerate rate (``pruning.quality.classify`` of
   each clean output) of the article's segments (streamed once: ``data: {"delta", "segment"}`` gives each) is
   compared with the sentence-level rate of the batch.
2. cache hits (``MOE_TRANSLATION_CACHE_SIZE``): per round one sentence not asked before (a miss) and the same
   sentence ``--repeats`` times (hits). Goal: a hit's p50 <= 2 ms. Hits and misses are checked in /metrics.

Every sentence is written here (templates), none taken from a dataset.

    python benchmarks/documents.py
    python benchmarks/documents.py --rounds 8 --paragraphs 20 --repeats 50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from moe_specialists.pruning.quality import classify

SUBJECTS = ["The teacher", "My neighbour", "A young doctor", "The old farmer", "Our new colleague", "The baker"]
ACTIONS = ["reads a letter", "paints the fence", "buys fresh bread", "waits for the bus", "opens the window",
           "walks the dog"]
TIMES = ["in the morning", "after lunch", "on Sundays", "before dinner", "when it rains"]


def sentence(i: int) -> str:
    """The i-th of 180 distinct everyday sentences."""
    s, a, t = SUBJECTS[i % 6], ACTIONS[(i // 6) % 6], TIMES[(i // 36) % 5]
    return f"{s} {a} {t}."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}..{max(values):.2f}"


def counter(client: httpx.Client, name: str) -> float:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return sum(s.value for f in families for s in f.samples if s.name == name)


@contextlib.contextmanager
def gateway(port: int, **env: str) -> Iterator[httpx.Client]:
    """A client of ``moe-specialists serve`` (no configuration, ``MOE_*`` from ``env``) once /readyz is 200."""
    with tempfile.TemporaryDirectory() as tmp:
        full = {**os.environ, "HF_HUB_OFFLINE": "1", "MOE_PORT": str(port), "MOE_ACCESS_LOG": "false",
                "XDG_CACHE_HOME": str(Path(tmp) / "cache"), **env}
        full.pop("MOE_REGISTRY_DIR", None)
        log = Path(tmp) / "serve.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(Path(sys.executable).with_name("moe-specialists")), "serve"],
                                    stdout=out, stderr=subprocess.STDOUT, env=full)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
                deadline = time.monotonic() + 600
                while True:
                    if proc.poll() is not None:
                        raise SystemExit(f"serve exited:\n{log.read_text()[-2000:]}")
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get("/readyz", timeout=2).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise SystemExit("not ready in 600 s")
                    time.sleep(1)
                yield client
        finally:
            proc.terminate()
            proc.wait(60)


def translate(client: httpx.Client, text: str | list[str]) -> tuple[float, list[str], str]:
    """(seconds, the translated texts, the specialist that answered) of one /v1/translate request, en->de."""
    t = time.perf_counter()
    r = client.post("/v1/translate", json={"text": text, "source": "en", "target": "de"})
    elapsed = time.perf_counter() - t
    r.raise_for_status()
    return elapsed, [item["text"] for item in r.json()["translations"]], r.headers["X-Specialist"]


def streamed_segments(client: httpx.Client, text: str) -> list[str]:
    """Each segment's clean translation, from the deltas of one streamed request (gaps stripped)."""
    parts: dict[int, str] = {}
    with client.stream("POST", "/v1/translate", json={"text": text, "source": "en", "target": "de",
                                                      "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = json.loads(line[6:])
                if "segment" in data:
                    parts[data["segment"]] = parts.get(data["segment"], "") + data["delta"]
    return [parts[k].strip() for k in sorted(parts)]


def degenerate_rate(outputs: list[str]) -> float:
    return sum(classify(o)[1] is not None for o in outputs) / len(outputs)


def article_vs_batch(client: httpx.Client, paragraphs: int, rounds: int) -> None:
    sentences = [sentence(i) for i in range(paragraphs * 3)]
    article = "\n\n".join(" ".join(sentences[i:i + 3]) for i in range(0, len(sentences), 3))
    translate(client, article)  # warm-up
    times: dict[str, list[float]] = {"article": [], "batch": []}
    same = 0
    for r in range(rounds):
        for kind in (("article", "batch") if r % 2 == 0 else ("batch", "article")):
            elapsed, out, _ = translate(client, article if kind == "article" else sentences)
            times[kind].append(elapsed)
            if kind == "article":
                one = out[0]
            else:
                batch = out
        rebuilt = "\n\n".join(" ".join(batch[i:i + 3]) for i in range(0, len(batch), 3))
        same += one == rebuilt
    ratios = [a / b for a, b in zip(times["article"], times["batch"], strict=True)]
    segments = streamed_segments(client, article)
    print(f"## Article vs batch: {paragraphs} paragraphs, {len(sentences)} sentences, {len(article)} characters, "
          f"{rounds} alternating rounds\n")
    print("| request | median s | min..max s |")
    print("| --- | ---: | --- |")
    for kind in ("article", "batch"):
        print(f"| {kind} | {statistics.median(times[kind]):.2f} | {spread(times[kind])} |")
    print(f"\narticle / batch time: median {statistics.median(ratios):.3f}, per round {spread(ratios)} (goal <= 1.1)")
    print(f"same output (article == the batch's sentences rebuilt): {same} of {rounds} rounds")
    print(f"degenerate: article segments {degenerate_rate(segments):.1%} ({len(segments)} segments), "
          f"sentences alone {degenerate_rate(batch):.1%}; segment outputs equal to the batch's: "
          f"{sum(a == b for a, b in zip(segments, batch, strict=False))} of {len(batch)}\n")


def cache_hits(client: httpx.Client, rounds: int, repeats: int, size: str) -> None:
    answered: dict[str, int] = {}

    def ask(text: str) -> float:
        elapsed, _, specialist = translate(client, text)
        answered[specialist] = answered.get(specialist, 0) + 1
        return elapsed * 1000

    ask(sentence(179))  # warm-up
    before = [counter(client, f"moe_gateway_translation_cache_{k}_total") for k in ("hits", "misses")]
    misses, hits, round_p50 = [], [], []
    for i in range(rounds):
        misses.append(ask(sentence(i)))
        these = [ask(sentence(i)) for _ in range(repeats)]
        hits += these
        round_p50.append(statistics.median(these))
    after = [counter(client, f"moe_gateway_translation_cache_{k}_total") for k in ("hits", "misses")]
    print(f"## Cache hits: MOE_TRANSLATION_CACHE_SIZE={size}, {rounds} rounds of 1 new sentence + {repeats} "
          "repeats\n")
    print("| request | n | p50 ms | p90 ms | per-round p50 ms (min..max) |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| miss (generated) | {len(misses)} | {percentile(misses, 0.5):.1f} | {percentile(misses, 0.9):.1f} | |")
    print(f"| hit (cached) | {len(hits)} | {percentile(hits, 0.5):.2f} | {percentile(hits, 0.9):.2f} | "
          f"{spread(round_p50)} |")
    counted = (after[0] - before[0], after[1] - before[1])
    print(f"\n/metrics: hits +{counted[0]:.0f}, misses +{counted[1]:.0f} for {len(hits)} repeats and "
          f"{len(misses)} new sentences; answered by {answered} (a repeat another specialist answers, e.g. while "
          "the first is restarted, is a miss of that one)")
    if sum(counted) != len(hits) + len(misses):
        raise SystemExit("the cache counted another number of lookups than requests were sent")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paragraphs", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--cache-rounds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--size", default="64MiB", help="MOE_TRANSLATION_CACHE_SIZE for the cache part")
    ap.add_argument("--port", type=int, default=8766)
    args = ap.parse_args()
    if args.paragraphs * 3 > 179 or args.cache_rounds > 179:
        raise SystemExit("--paragraphs at most 59 and --cache-rounds at most 179 (distinct sentences)")
    with gateway(args.port) as client:
        article_vs_batch(client, args.paragraphs, args.rounds)
    with gateway(args.port, MOE_TRANSLATION_CACHE_SIZE=args.size) as client:
        cache_hits(client, args.cache_rounds, args.repeats, args.size)


if __name__ == "__main__":
    main()
