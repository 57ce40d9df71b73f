"""The gateway's view of the answer extractor (``models.extract``): final texts, and streamed prefixes that
later text will not change."""

from __future__ import annotations

from collections.abc import Iterable

from moe_specialists.models.extract import extract_answer


def extract_translation(raw: str, end_markers: Iterable[str] = (), final: bool = True) -> str:
    """The translation in ``raw``. ``final=False`` (streaming) returns a prefix that later text will not
    change: held back while the text may still be reasoning."""
    text, _ = extract_answer(raw, end_markers, strip=final)
    if not final:
        # A partial special token (e.g. "<|en") or '<think' at the end may still grow: hold it back.
        tail = text.rfind("<")
        if tail != -1 and ">" not in text[tail:]:
            text = text[:tail]
        return text.lstrip()
    return text
