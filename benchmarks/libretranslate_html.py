"""Latency of LibreTranslate's /translate with ``format=html`` against plain text of the same words: requests
alternate (html, text, html, ...) so that drift hits both; prints the median and the 10-90% spread of each,
and the ratio of medians with the spread of per-round ratios.

The html document has paragraphs with inline tags (sent as markup; a model that drops a tag makes the gateway
retranslate that paragraph node by node), a heading and a list; the plain text is its text, one paragraph per
line, sent as one text.

    python benchmarks/libretranslate_html.py                 # the `make serve` specialists, in-process vLLM
    python benchmarks/libretranslate_html.py --url http://127.0.0.1:8000 --rounds 50
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.client_calls import KEY, bundled_gateway  # noqa: E402

DOC = ("<h2>The garden</h2><p>The <b>children</b> are playing in the garden.</p>"
       "<p>Their mother is reading a <i>book</i> under the tree.</p>"
       "<ul><li>The dog sleeps.</li><li>The cat watches the birds.</li></ul>")


def plain(doc: str) -> str:
    from moe_specialists.service.markup import texts_of

    return " ".join(texts_of(doc))


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=10)
    return q[0], statistics.median(xs), q[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--key", default=KEY)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    text = plain(DOC)
    with contextlib.nullcontext(args.url) if args.url else bundled_gateway() as url, httpx.Client(
            base_url=url, timeout=120) as c:
        def once(q: str, fmt: str) -> float:
            start = time.perf_counter()
            r = c.post("/translate", json={"q": q, "source": "en", "target": "de", "format": fmt, "api_key": args.key})
            r.raise_for_status()
            return time.perf_counter() - start

        once(DOC, "html"), once(text, "text")  # warm-up
        html, txt = [], []
        for _ in range(args.rounds):
            html.append(once(DOC, "html"))
            txt.append(once(text, "text"))
        sample = c.post("/translate", json={"q": DOC, "source": "en", "target": "de", "format": "html",
                                            "api_key": args.key}).json()["translatedText"]
    ratios = [h / t for h, t in zip(html, txt, strict=True)]
    print(f"{args.rounds} alternating rounds, {len(text)} characters of text ({len(DOC)} as html)")
    for name, xs in (("html", html), ("text", txt)):
        lo, mid, hi = quantiles(xs)
        print(f"{name}: median {1000 * mid:.0f} ms (10-90%: {1000 * lo:.0f}-{1000 * hi:.0f} ms)")
    lo, mid, hi = quantiles(ratios)
    print(f"ratio html/text: {statistics.median(html) / statistics.median(txt):.2f} of medians; per round "
          f"median {mid:.2f} (10-90%: {lo:.2f}-{hi:.2f})")
    print(f"html answer: {sample}")


if __name__ == "__main__":
    main()
