"""Language identification on FLORES devtest: py3langid restricted to the candidate languages (the gateway's
``service.detect.Detector``) against the script + function-word heuristic it replaced (copied below, only for
this comparison). Per language: accuracy on whole sentences and on their first 20 characters; then sentences
per second. Goals (issue 15): >= 99.5% on sentences, >= 97% on 20-character prefixes.

    python benchmarks/detection.py                       # first 300 lines of each of the 10 languages
    python benchmarks/detection.py --data FLORES_DIR/devtest --lines 1012
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LANGS = ["en", "de", "fr", "cs", "ru", "es", "zh", "ja", "bn", "arz"]


# ---- the old heuristic (service/detect.py before issue 15), verbatim but for its name ----
METHOD = "script + function-word heuristic"

_WORD_LISTS = {
    "en": "the and of to is in that it for was on are with as this be at by have from not you",
    "de": "der die das und ist nicht ein eine zu den mit sich des auf für im dem von auch es ich",
    "fr": "le la les et est des une un du que pour dans pas en au qui sur avec ce il je vous",
    "cs": "a je se na v že to s z do jsou by ve pro jak ale tak o i jsem není",
    "es": "el la los las y es de que en un una por con para no se del al lo como",
}
_WORDS = {code: frozenset(words.split()) for code, words in _WORD_LISTS.items()}
_LETTERS: dict[str, str] = {"de": "äöüß", "fr": "éèêëàâçœîôû", "cs": "ěščřžýůťďň", "es": "ñ¿¡áíóú"}
_PRIOR = ["en", "es", "fr", "de", "ru", "zh", "ja", "cs", "bn", "arz"]
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    for script in ("CYRILLIC", "HIRAGANA", "KATAKANA", "CJK", "BENGALI", "ARABIC", "LATIN"):
        if name.startswith(script):
            return script
    return "OTHER"


def detect_language(text: str, candidates: Collection[str]) -> tuple[str, float]:
    """(language code among ``candidates``, confidence in [0, 1]). Candidates must not be empty."""
    assert candidates, "detect_language needs candidate languages"
    scripts = Counter(s for ch in text if (s := _script(ch)))
    total = sum(scripts.values())
    scores: dict[str, float] = dict.fromkeys(candidates, 0.0)
    if total:
        by_script = {
            "ru": scripts["CYRILLIC"],
            "ja": scripts["HIRAGANA"] + scripts["KATAKANA"] + (scripts["CJK"] if scripts["HIRAGANA"] else 0),
            "zh": scripts["CJK"] if not (scripts["HIRAGANA"] or scripts["KATAKANA"]) else 0,
            "bn": scripts["BENGALI"],
            "arz": scripts["ARABIC"],
        }
        for code, count in by_script.items():
            if code in scores:
                scores[code] = count / total
        latin = scripts["LATIN"] / total
        words = [w.lower() for w in _WORD.findall(text)]
        lowered = text.lower()
        latin_scores = {}
        for code in ("en", "de", "fr", "cs", "es"):
            if code in scores:
                hits = sum(w in _WORDS[code] for w in words)
                letters = sum(lowered.count(ch) for ch in _LETTERS.get(code, ""))
                latin_scores[code] = hits + 0.5 * letters
        mass = sum(latin_scores.values())
        for code, value in latin_scores.items():
            scores[code] = latin * (value / mass if mass else 1.0 / len(latin_scores))
    # Ties (no evidence) go to the more common language: the order of _PRIOR.
    order = sorted(scores, key=lambda c: (_PRIOR.index(c) if c in _PRIOR else len(_PRIOR), c))
    best = max(order, key=lambda c: scores[c])
    return best, round(min(max(scores[best], 0.0), 1.0), 3)


# ---- the benchmark ----
def accuracy(detect: Callable[[str, Collection[str]], tuple[str, float]], texts: dict[str, list[str]],
             prefix: int | None) -> dict[str, float]:
    """Share of texts of each language detected as that language (candidates: every language)."""
    out = {}
    for lang, lines in texts.items():
        hits = sum(detect(line[:prefix] if prefix else line, LANGS)[0] == lang for line in lines)
        out[lang] = hits / len(lines)
    return out


def speed(detect: Callable[[str, Collection[str]], tuple[str, float]], texts: dict[str, list[str]]) -> float:
    lines = [line for lines in texts.values() for line in lines]
    start = time.perf_counter()
    for line in lines:
        detect(line, LANGS)
    return len(lines) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder of <lang>.txt files, e.g. FLORES devtest")
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--prefix", type=int, default=20)
    args = parser.parse_args()

    from moe_specialists.service.detect import Detector

    texts = {}
    for lang in LANGS:
        lines = (args.data / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[: args.lines]
        texts[lang] = [line for line in lines if line.strip()]
    methods = {"heuristic": detect_language, "py3langid": Detector().detect}
    table = {(name, p): accuracy(fn, texts, p) for name, fn in methods.items() for p in (None, args.prefix)}
    cols = [(name, p) for p in (None, args.prefix) for name in methods]
    heads = [f"{name} {'sentence' if p is None else f'{p} chars'}" for name, p in cols]
    print(f"FLORES devtest, first {args.lines} lines per language, candidates: {', '.join(LANGS)}")
    print("| language | " + " | ".join(heads) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for lang in LANGS:
        print(f"| {lang} | " + " | ".join(f"{100 * table[c][lang]:.1f}%" for c in cols) + " |")
    means = [100 * sum(table[c].values()) / len(LANGS) for c in cols]
    print("| **all** | " + " | ".join(f"**{m:.1f}%**" for m in means) + " |")
    rates = {name: speed(fn, texts) for name, fn in methods.items()}
    print("sentences per second (one core): " + ", ".join(f"{name} {rate:,.0f}" for name, rate in rates.items()))


if __name__ == "__main__":
    main()
