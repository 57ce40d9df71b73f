"""Cheap language identification for ``source: "auto"``: Unicode script first (Cyrillic, Han, kana,
Bengali, Arabic), then for Latin script a score of frequent function words and distinctive letters.
It is a heuristic (good for a sentence or more of running text), not a trained classifier."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Collection

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
