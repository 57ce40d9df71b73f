"""Glossary adherence through the gateway (DeepL's /v2/translate with ``glossary_id``, en->de): 118 English
sentences written for this benchmark, each with one or two terms of a 24-entry glossary, translated with and
without the glossary. Prints how each term occurrence reached the output (``moe_gateway_glossary_terms_total``:
the model copied its placeholder, the fallback translation had the term already, a copied source term was
replaced, the term was appended), the share of required target terms present in each run, and chrF against
German references written with the sentences: of the whole output, and of the rest (every glossary target term
removed from output and reference), the part the glossary should leave as good as it was; and chrF of the
glossary run against the run without it on the rest (how much of the rest the placeholders changed).

    python benchmarks/glossary_adherence.py                  # the bundled tiny translator, in-process vLLM (CPU)
    python benchmarks/glossary_adherence.py --url http://127.0.0.1:8000 --key KEY
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.client_calls import serve_in_thread  # noqa: E402

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

# German references written with the sentences (the glossary's terms in them), for chrF.
REFERENCES = [
    "Das Kraftfahrzeug parkt vor dem Gebäude.", "Wir haben um zehn Uhr eine Besprechung.",
    "Mein Rechner ist heute sehr langsam.", "Die Ärztin empfängt Sie jetzt.", "Der Zug fährt um sechs Uhr morgens ab.",
    "Ihr Gebäude hat eine rote Tür.", "Die Lehrkraft erklärte die Lektion noch einmal.",
    "Ich habe mein Mobiltelefon zu Hause gelassen.", "Die Stadt ist im Frühling schön.",
    "Das Unternehmen stellte zwanzig neue Arbeiter ein.", "Diese Straße ist sehr ruhig.",
    "Sie liest einen Band über Geschichte.", "Die Kinder spielen im Garten.", "Der Fluss fließt durch das Tal.",
    "Der Laden schließt um acht.", "Der Preis für Brot ist gestiegen.", "Bitte öffne das Fenster.",
    "Der Bericht ist am Freitag fällig.", "Die alte Brücke wurde letztes Jahr repariert.",
    "Der Bahnhof ist zwei Straßen entfernt.", "Die Kundin bat um eine Erstattung.",
    "Die Fahrbahn wurde nach dem Sturm gesperrt.", "Ich habe einen Fahrschein für das Konzert gekauft.",
    "Er fährt mit seinem Fahrrad zur Arbeit.", "Die Besprechung wurde abgesagt, weil die Ärztin krank war.",
    "Wir fuhren das Kraftfahrzeug über die Brücke.", "Die Lehrkraft gab jedem Kind einen Band.",
    "Der Laden in unserer Straße verkauft frisches Obst.", "Ihr Mobiltelefon klingelte während der Besprechung.",
    "Das Unternehmen zog in eine andere Stadt.", "Ein neuer Bahnhof wurde am Fluss gebaut.",
    "Die Kundin zahlte einen hohen Preis für das Kraftfahrzeug.", "Schreib den Bericht auf deinem Rechner.",
    "Der Garten hinter dem Gebäude ist klein.", "Der Zug fuhr langsam über die Brücke.",
    "Er hat seinen Fahrschein am Bahnhof verloren.", "Unsere Lehrkraft fährt Fahrrad.",
    "Die Ärztin wohnt in einem großen Gebäude.", "Die Fahrbahn in die Stadt ist lang.",
    "Schließ das Fenster, bevor du gehst.", "Der Preis für den Fahrschein beträgt zehn Euro.",
    "Dieser Band wurde von einer Ärztin geschrieben.", "Das Unternehmen schickte uns einen Bericht.",
    "Mein Rechner kann den Bericht nicht öffnen.", "Neben dem Bahnhof gibt es einen kleinen Laden.",
    "Nach der Besprechung gingen wir am Fluss entlang.", "Die Stadt baute eine neue Fahrbahn.",
    "Eine Kundin vergaß ihr Mobiltelefon im Laden.", "Das Gebäude hat ein großes Fenster.",
    "Die Lehrkraft wartet am Bahnhof.", "Sie reparierten das Fahrrad im Garten.", "Die Straße war voller Menschen.",
    "Der Preis für Computer sinkt.", "Der Zug hatte wieder Verspätung.", "Park das Kraftfahrzeug auf der Straße.",
    "Die Brücke ist wegen Reparaturen gesperrt.", "Jede Kundin bekommt einen kostenlosen Fahrschein.",
    "Sie rief die Ärztin mit ihrem Mobiltelefon an.", "Das Unternehmen eröffnete einen Laden in der Stadt.",
    "Der Fluss ist im Winter sehr kalt.", "Ich las den Bericht im Zug.", "Die Lehrkraft öffnete das Fenster.",
    "Diese Fahrbahn führt zum Bahnhof.", "Sein Gebäude ist in der Nähe der Brücke.",
    "Die Besprechung beginnt in fünf Minuten.", "Wir brauchen einen neuen Rechner für das Büro.",
    "Mein Fahrrad ist im Garten.", "Der Band hat einen blauen Einband.", "Die Stadt hat drei Brücken.",
    "Der Laden senkte den Preis.", "Die Kundin hat immer recht.", "Die Ärztin schrieb einen langen Bericht.",
    "Nimm den Zug in die Stadt.", "Kauf den Fahrschein am Bahnhof.",
    "Das Kraftfahrzeug ist auf der Fahrbahn liegen geblieben.", "Die Lichter der Straße sind an.",
    "Die Lehrkraft hat ein neues Mobiltelefon.", "Das Unternehmen ist sehr alt.",
    "Das Gebäude hat einen Garten auf dem Dach.", "Nicht aus dem Fenster lehnen.",
    "Der Fluss hat die Fahrbahn überflutet.", "Der Raum für die Besprechung ist im zweiten Stock.",
    "Ich habe meinen Fahrschein im Kraftfahrzeug vergessen.", "Die Ärztin hat ein Fahrrad.",
    "Der Rechner im Laden war billig.", "Er schrieb einen Band über die Stadt.", "Der Preis stand auf dem Fenster.",
    "Das Unternehmen braucht eine Ärztin.", "Die Kundin wartete am Bahnhof.", "Die Brücke über den Fluss ist alt.",
    "Unsere Straße hat einen neuen Laden.", "Der Bericht lag auf dem Schreibtisch der Lehrkraft.",
    "Sie hat ihr Mobiltelefon selbst repariert.", "Der Zug hielt am Fluss.",
    "Mein Gebäude ist weit vom Bahnhof entfernt.", "Der Garten ist nach dem Regen grün.",
    "Die Lehrkraft fuhr das Kraftfahrzeug zur Schule.", "Die Besprechung endete spät.",
    "Die Fahrbahn ist nass und gefährlich.", "Er fand einen Fahrschein auf der Straße.",
    "Das Unternehmen verkauft Computer.", "Die Ärztin öffnete das Fenster.", "Jeder Band im Laden ist neu.",
    "Die Stadt ist für ihre Brücken berühmt.", "Ihr Fahrrad wurde gestern gestohlen.",
    "Der Preis beinhaltet das Frühstück.", "Eine Kundin rief wegen dem Bericht an.",
    "Das Gebäude ist weiß gestrichen.", "Biegen Sie am Bahnhof links ab.", "Der Fluss ist hier breit.",
    "Das Kraftfahrzeug ist zu teuer.", "Wir trafen die Lehrkraft im Garten.",
    "Ich lade mein Mobiltelefon jede Nacht auf.", "Die Besprechung war kurz.", "Der Rechner steht auf dem Tisch.",
    "Der Zug in die Stadt ist voll.", "Der Laden ist am Sonntag geschlossen.",
    "Die neue Fahrbahn führt um die Stadt herum.",
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

    from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR
    from moe_specialists.service.settings import Settings, SpecialistSpec

    state = tempfile.mkdtemp(prefix="glossary-bench-")
    settings = Settings(specialists=[SpecialistSpec(name="tiny", path=str(BUNDLED_MODEL_DIR), directions=["en-de"])],
                        api_keys=[KEY], max_model_len=1024, enforce_eager=True, access_log=False, state_dir=state,
                        max_batch_size=128, max_queue_per_engine=256, request_timeout_s=600)
    with serve_in_thread(settings, timeout=900) as url:
        yield url


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

    assert len(SENTENCES) == len(REFERENCES) >= 100 and all(required(s) for s in SENTENCES), "a term a sentence"
    assert all(present(t, r) for s, r in zip(SENTENCES, REFERENCES, strict=True) for t in required(s))
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
    def chrf(hyps: list[str], refs: list[str]) -> float:
        return CHRF().corpus_score(hyps, [refs]).score

    rest = [without_terms(t) for t in REFERENCES]
    scores = {name: (chrf(out, REFERENCES), chrf([without_terms(t) for t in out], rest))
              for name, out in (("without", plain), ("with", forced))}
    similar = chrf([without_terms(t) for t in forced], [without_terms(t) for t in plain])
    print(f"{len(SENTENCES)} sentences, {len(need)} required target terms, {total:.0f} term occurrences")
    print("\n| how the term got into the output | occurrences | share |\n| --- | ---: | ---: |")
    for k, v in ways.items():
        print(f"| {k} | {v:.0f} | {100 * v / max(total, 1):.1f}% |")
    print("\n| run | required target terms present | chrF | chrF of the rest | time (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, hit, took in (("without", hit_plain, t_plain), ("with", hit_forced, t_forced)):
        whole, part = scores[name]
        print(f"| {name} glossary | {hit}/{len(need)} ({100 * hit / len(need):.1f}%) | {whole:.1f} | {part:.1f} | "
              f"{took:.1f} |")
    print(f"\nchrF of the rest, the glossary run against the run without it: {similar:.1f}")
    for i in range(min(args.show, len(SENTENCES))):
        print(f"\n  {SENTENCES[i]}\n  - {plain[i]}\n  + {forced[i]}")


if __name__ == "__main__":
    main()
