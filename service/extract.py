"""The gateway's view of the answer extractor (``models.extract``): final texts, and streamed prefixes that
later text will not change."""

from __future__ import annotations

import re
from collections.abc import Iterable

from moe_specialists.models.extract import END_MARKERS, WORD_TOKENS, extract_answer

_PARTIAL_SPECIAL = re.compile(r"<\|[^|<>\s]{0,40}\|?$")  # an unfinished <|...|> at the end


def extract_translation(raw: str, end_markers: Iterable[str] = (), final: bool = True) -> str:
    """The translation in ``raw``. ``final=False`` (streaming) returns a prefix that later text will not
    change: held back while the text may still be reasoning, or while its end may still become a special
    token or an end marker."""
    text, _ = extract_answer(raw, end_markers, strip=final)
    if final:
        return text
    return text[: len(text) - _growing_tail(text, (*WORD_TOKENS, *END_MARKERS, *end_markers))].lstrip()


def _growing_tail(text: str, markers: Iterable[str]) -> int:
    """Length of the longest end of ``text`` that may still grow into a marker or a special token
    (``<|...|>``): "Hallo <thi" -> 4, "Welt<|en" -> 4, "a < b" -> 0."""
    partial = _PARTIAL_SPECIAL.search(text)
    longest = len(partial.group()) if partial else 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:k]):
                longest = k
                break
    return longest
