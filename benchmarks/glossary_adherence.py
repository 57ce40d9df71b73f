"""Glossary adherence through the gateway (DeepL's /v2/translate with ``glossary_id``, en->de): 118 English
sentences written for this benchmark, each with one or two terms of a 24-entry glossary, translated with and
without the glossary. Prints how each term occurrence reached the output (``moe_gateway_glossary_terms_total``:
the model copied its placeholder, the fallback translation had the term already, a copied source term was
replaced, the term was appended), the share of required target terms present in each run, and chrF of the
glossary run against the run without it on the rest of the text (every glossary target term removed from both).

    python benchmarks/glossary_adherence.py                  # the bundled tiny translator, in-process vLLM (CPU)
    python benchmarks/glossary_adherence.py --url http://127.0.0.1:8000 --key KEY
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEY = "bench-key"
GLOSSARY = {
    "car": "Kraftfahrzeug", "meeting": "Besprechung", "computer": "Rechner", "doctor": "Ärztin",
    "train": "Zug", "house": "Gebäude", "teacher": "Lehrkraft", "phone": "Mobiltelefon", "city": "Stadt",
    "company": "Unternehmen", "street": "Straße", "book": "Band", "garden": "Garten", "river": "Fluss",
    "shop": "Laden", "price": "Preis", "window": "Fenster", "report": "Bericht", "bridge": "Brücke",
    "station": "Bahnhof", "customer": "Kundin", "road": "Fahrbahn", "ticket": "Fahrschein", "bicycle": "Fahrrad",
}
SENTENCES = [
    "The car is parked in front of the house.", "We have a meeting at ten o'clock.",
    "My computer is very slow today.", "The doctor will see you now.", "The train leaves at six in the morning.",
    "Their house has a red door.", "The teacher explained the lesson again.", "I left my phone at home.",
    "The city is beautiful in spring.", "The company hired twenty new workers.", "This street is very quiet.",
    "She is reading a book about history.", "The children are playing in the garden.",
    "The river flows through the valley.", "The shop closes at eight.", "The price of bread went up.",
    "Please open the window.", "The report is due on Friday.", "The old bridge was repaired last year.",
    "The station is two streets away.", "The customer asked for a refund.", "The road was closed after the storm.",
    "I bought a ticket for the concert.", "He rides his bicycle to work.",
    "The meeting was cancelled because the doctor was ill.", "We drove the car across the bridge.",
    "The teacher gave every child a book.", "The shop on our street sells fresh fruit.",
    "Her phone rang during the meeting.", "The company moved to another city.",
    "A new station was built near the river.", "The customer paid a high price for the car.",
    "Write the report on your computer.", "The garden behind the house is small.",
    "The train crossed the bridge slowly.", "He lost his ticket at the station.",
    "Our teacher rides a bicycle.", "The doctor lives in a big house.", "The road to the city is long.",
    "Close the window before you leave.", "The price of the ticket is ten euros.",
    "This book was written by a doctor.", "The company sent us a report.", "My computer cannot open the report.",
    "There is a small shop next to the station.", "We walked along the river after the meeting.",
    "The city built a new road.", "A customer forgot her phone in the shop.", "The house has a large window.",
    "The teacher is waiting at the station.", "They repaired the bicycle in the garden.",
    "The street was full of people.", "The price of computers is falling.", "The train was late again.",
    "Park the car in the street.", "The bridge is closed for repairs.", "Every customer gets a free ticket.",
    "She called the doctor on her phone.", "The company opened a shop in the city.",
    "The river is very cold in winter.", "I read the report on the train.", "The teacher opened the window.",
    "This road leads to the station.", "His house is near the bridge.", "The meeting starts in five minutes.",
    "We need a new computer for the office.", "My bicycle is in the garden.", "The book has a blue cover.",
    "The city has three bridges.", "The shop lowered the price.", "The customer is always right.",
    "The doctor wrote a long report.", "Take the train to the city.", "Buy the ticket at the station.",
    "The car broke down on the road.", "The street lights are on.", "The teacher has a new phone.",
    "The company is very old.", "There is a garden on the roof of the house.", "Do not lean out of the window.",
    "The river has flooded the road.", "The meeting room is on the second floor.",
    "I forgot my ticket in the car.", "The doctor has a bicycle.", "The computer in the shop was cheap.",
    "He wrote a book about the city.", "The price was written on the window.", "The company needs a doctor.",
    "The customer waited at the station.", "The bridge over the river is old.",
    "Our street has a new shop.", "The report was on the teacher's desk.", "She fixed her phone herself.",
    "The train stopped near the river.", "My house is far from the station.",
    "The garden is green after the rain.", "The teacher drove the car to school.",
    "The meeting ended late.", "The road is wet and dangerous.", "He found a ticket on the street.",
    "The company sells computers.", "The doctor opened the window.", "Every book in the shop is new.",
    "The city is famous for its bridges.", "Her bicycle was stolen yesterday.", "The price includes breakfast.",
    "A customer called about the report.", "The house is painted white.", "Turn left at the station.",
    "The river is wide here.", "The car is too expensive.", "We met the teacher in the garden.",
    "I charge my phone every night.", "The meeting was short.", "The computer is on the table.",
    "The train to the city is full.", "The shop is closed on Sunday.", "The new road goes around the city.",
]


def required(text: str) -> list[str]:
    """The target terms a sentence's source terms ask for (each once; a lowercase term matches any case)."""
    found = [t for s, t in GLOSSARY.items() if re.search(rf"(?<!\w){re.escape(s)}(?!\w)", text, re.I)]
    return list(dict.fromkeys(found))


def present(term: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(term)}(?!\w)", text) is not None


def without_terms(text: str) -> str:
    for term in sorted(set(GLOSSARY.values()), key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(term)}(?!\w)", " ", text)
    return re.sub(r"\s+", " ", text).strip()


@contextlib.contextmanager
def tiny_gateway() -> Iterator[str]:
    """A gateway on loopback serving the bundled tiny translator (en->de) in an in-process vLLM engine."""
    import tempfile

    import uvicorn

    from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR
    from moe_specialists.service.app import create_app
    from moe_specialists.service.settings import Settings, SpecialistSpec

    state = tempfile.mkdtemp(prefix="glossary-bench-")
    settings = Settings(specialists=[SpecialistSpec(name="tiny", path=str(BUNDLED_MODEL_DIR), directions=["en-de"])],
                        api_keys=[KEY], max_model_len=1024, enforce_eager=True, access_log=False, state_dir=state,
                        max_batch_size=128, max_queue_per_engine=256, request_timeout_s=600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
        time.sleep(1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(60)


def hows(c: httpx.Client) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(c.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "moe_gateway_glossary_terms_total":
                out[sample.labels["how"]] = sample.value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--key", default=KEY)
    parser.add_argument("--show", type=int, default=5, help="sentences to print with both outputs")
    args = parser.parse_args()
    from sacrebleu.metrics import CHRF

    assert len(SENTENCES) >= 100 and all(required(s) for s in SENTENCES), "every sentence holds a term"
    headers = {"Authorization": f"DeepL-Auth-Key {args.key}"}
    with contextlib.nullcontext(args.url) if args.url else tiny_gateway() as url, httpx.Client(
            base_url=url, timeout=900, headers=headers) as c:
        entries = "\n".join(f"{s}\t{t}" for s, t in GLOSSARY.items())
        r = c.post("/v2/glossaries", json={"name": "bench", "source_lang": "en", "target_lang": "de",
                                           "entries": entries, "entries_format": "tsv"})
        r.raise_for_status()
        gid = r.json()["glossary_id"]

        def run(glossary: str | None) -> tuple[list[str], float]:
            body = {"text": SENTENCES, "source_lang": "EN", "target_lang": "DE"}
            if glossary:
                body["glossary_id"] = glossary
            start = time.perf_counter()
            r = c.post("/v2/translate", json=body)
            r.raise_for_status()
            return [t["text"] for t in r.json()["translations"]], time.perf_counter() - start

        plain, t_plain = run(None)
        before = hows(c)
        forced, t_forced = run(gid)
        after = hows(c)
        c.delete(f"/v2/glossaries/{gid}")
    ways = {k: after.get(k, 0) - before.get(k, 0) for k in ("placeholder", "model", "replaced", "appended")}
    total = sum(ways.values())
    need = [(term, i) for i, s in enumerate(SENTENCES) for term in required(s)]
    hit_forced = sum(present(t, forced[i]) for t, i in need)
    hit_plain = sum(present(t, plain[i]) for t, i in need)
    chrf = CHRF().corpus_score([without_terms(t) for t in forced], [[without_terms(t) for t in plain]]).score
    print(f"{len(SENTENCES)} sentences, {len(need)} required target terms, {total:.0f} term occurrences")
    print("\n| how the term got into the output | occurrences | share |\n| --- | ---: | ---: |")
    for k, v in ways.items():
        print(f"| {k} | {v:.0f} | {100 * v / max(total, 1):.1f}% |")
    print("\n| run | required target terms present | time (s) |\n| --- | ---: | ---: |")
    print(f"| without glossary | {hit_plain}/{len(need)} ({100 * hit_plain / len(need):.1f}%) | {t_plain:.1f} |")
    print(f"| with glossary | {hit_forced}/{len(need)} ({100 * hit_forced / len(need):.1f}%) | {t_forced:.1f} |")
    print(f"\nchrF of the rest (target terms removed), with vs without glossary: {chrf:.1f}")
    for i in range(min(args.show, len(SENTENCES))):
        print(f"\n  {SENTENCES[i]}\n  - {plain[i]}\n  + {forced[i]}")


if __name__ == "__main__":
    main()
