"""Texts cut into the segments a specialist translates, and rebuilt around their translations.

A text becomes ``Segmented(texts, gaps)``: the segments to translate (no whitespace at either end) and the
source between them (``gaps``: one more than ``texts``; whitespace, line breaks, paragraph breaks), so that
``gaps[0] + texts[0] + gaps[1] + ... + texts[-1] + gaps[-1]`` is the source exactly, and ``rebuild`` puts each
translation where its segment was. Sentences come from ``sentencex`` (Wikimedia's segmenter: its own rules for
about 30 languages, a fallback chain to a related language for the other ~270, English's rules for a code it
does not know). Split modes, as DeepL's ``split_sentences``:

* ``sentences`` ("1"): at line breaks and sentence ends;
* ``nonewlines``: at sentence ends (and blank lines: a paragraph ends a sentence) but not at a single line break,
  which is sent to the model as a space (``flatten_newlines``);
* ``none`` ("0"): the whole text is one segment.

A segment longer than ``max_chars`` is cut again after clause punctuation (, ; : and CJK 、，；：), then between
words, then (a run without spaces) every ``max_chars`` characters: never truncated. In ``markup`` mode (a run of
HTML/XML with inline tags) a cut is made only outside tags and outside inline elements, so each segment is
well-formed markup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import sentencex

SplitMode = Literal["sentences", "nonewlines", "none"]

_LINE = re.compile(r"[^\n]*\n|[^\n]+")
_CLAUSE = re.compile(r".+?(?:[,;:]\s+|[、，；：]\s*|\s[–—]\s+|\Z)", re.S)
_WORD = re.compile(r"\S+\s*|\s+")
_TAG = re.compile(r"<(/?)([^\s/>]+)[^>]*?(/?)>")
_VOID = frozenset(["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                   "wbr"])


@dataclass(frozen=True)
class Segmented:
    texts: tuple[str, ...]
    gaps: tuple[str, ...]

    def source(self) -> str:
        """The text this was made from."""
        return rebuild(self, list(self.texts))


def rebuild(seg: Segmented, translations: list[str]) -> str:
    """``gaps[0] + translations[0] + gaps[1] + ... + gaps[-1]``."""
    assert len(translations) == len(seg.texts) == len(seg.gaps) - 1
    return "".join(g + t for g, t in zip(seg.gaps, translations, strict=False)) + seg.gaps[-1]


def trim(text: str) -> tuple[str, str, str]:
    """(leading whitespace, core, trailing whitespace); the core is "" for a blank text."""
    core = text.strip()
    if not core:
        return text, "", ""
    start = text.index(core)
    return text[:start], core, text[start + len(core):]


def lines(text: str) -> list[str]:
    """The lines of ``text``, each with its ``\\n`` (``"".join(lines(t)) == t``)."""
    return _LINE.findall(text)


def sentences(text: str, language: str) -> list[str]:
    """sentencex's sentences of ``text`` in ``language`` (a BCP-47 code), their whitespace kept."""
    out = [s for s in sentencex.segment(language, text) if s]
    assert "".join(out) == text, "sentencex keeps every character"
    return out or ([text] if text else [])


def flatten_newlines(text: str) -> str:
    """Whitespace runs with a line break become one space (what the model reads in ``nonewlines`` mode)."""
    return re.sub(r"\s*\n\s*", " ", text)


def safe_cuts(markup: str) -> set[int]:
    """Offsets of ``markup`` outside every tag and every open (non-void) element: where a cut leaves both
    sides well-formed. bs4 escapes ``<`` and ``>`` in text and attribute values, so ``<...>`` is always a tag."""
    unsafe: set[int] = set()
    depth, at = 0, 0
    for m in _TAG.finditer(markup):
        if depth:
            unsafe.update(range(at, m.start() + 1))
        unsafe.update(range(m.start() + 1, m.end()))
        closing, name, self_closing = m.group(1), m.group(2).lower(), m.group(3)
        if closing:
            depth = max(depth - 1, 0)
        elif not self_closing and name not in _VOID:
            depth += 1
        at = m.end()
    if depth:
        unsafe.update(range(at, len(markup) + 1))
    return set(range(len(markup) + 1)) - unsafe


def merge_unsafe(pieces: list[str], safe: set[int] | None) -> list[str]:
    """Join neighbouring pieces whose boundary is not in ``safe`` (None: every boundary is safe)."""
    if safe is None or not pieces:
        return pieces
    out, at = [pieces[0]], len(pieces[0])
    for piece in pieces[1:]:
        if at in safe:
            out.append(piece)
        else:
            out[-1] += piece
        at += len(piece)
    return out


def pack(pieces: list[str], max_chars: int) -> list[str]:
    """Consecutive pieces joined greedily into chunks of at most ``max_chars`` (a longer piece alone)."""
    out: list[str] = []
    for piece in pieces:
        if out and len(out[-1]) + len(piece) <= max_chars:
            out[-1] += piece
        else:
            out.append(piece)
    return out


def split_long(text: str, max_chars: int, safe: set[int] | None = None) -> list[str]:
    """``text`` in chunks of at most ``max_chars`` characters, cut after clauses, else between words, else every
    ``max_chars`` characters; ``"".join`` of the chunks is ``text``. With ``safe`` (markup) a cut is made only at
    those offsets, so a chunk may stay longer."""
    if len(text) <= max_chars:
        return [text]
    out: list[str] = []
    for chunk in pack(merge_unsafe(_CLAUSE.findall(text), safe), max_chars):
        start = len("".join(out))
        local = None if safe is None else {i - start for i in safe}
        if len(chunk) <= max_chars:
            out.append(chunk)
            continue
        for part in pack(merge_unsafe(_WORD.findall(chunk), local), max_chars):
            if len(part) <= max_chars or safe is not None:
                out.append(part)
            else:
                out += [part[i:i + max_chars] for i in range(0, len(part), max_chars)]
    assert "".join(out) == text
    return out


def spans(text: str, language: str, mode: SplitMode) -> list[str]:
    """The pieces a text is cut into by ``mode`` (whitespace kept; ``"".join`` is ``text``)."""
    if mode == "none":
        return [text]
    if mode == "nonewlines":
        return sentences(text, language)
    return [s for line in lines(text) for s in sentences(line, language)]


def segment(
    text: str, language: str, mode: SplitMode = "sentences", max_chars: int | None = None, markup: bool = False
) -> Segmented:
    """``text`` as segments and gaps (see the module's doc); a blank text has no segment, one gap: itself."""
    safe = safe_cuts(text) if markup else None
    texts: list[str] = []
    gaps = [""]
    at = 0
    for span in merge_unsafe(spans(text, language, mode), safe):
        local = None if safe is None else {i - at for i in safe}
        pieces = [span] if max_chars is None else split_long(span, max_chars, local)
        for piece in pieces:
            lead, core, trail = trim(piece)
            gaps[-1] += lead
            if core:
                texts.append(core)
                gaps.append(trail)
        at += len(span)
    return Segmented(tuple(texts), tuple(gaps))


def keep_format(source: str, translation: str) -> str:
    """DeepL's ``preserve_formatting=1`` for one segment: the translation's first letter takes the case of the
    source's first letter, and sentence-final punctuation the source does not end with is removed."""
    if not translation:
        return translation
    s_first = next((c for c in source if c.isalpha()), "")
    t_at = next((i for i, c in enumerate(translation) if c.isalpha()), None)
    if s_first and t_at is not None and s_first.islower() != translation[t_at].islower():
        cased = translation[t_at].lower() if s_first.islower() else translation[t_at].upper()
        translation = translation[:t_at] + cased + translation[t_at + 1:]
    ends = ".!?。！？"
    if source and source[-1] not in ends:
        translation = translation.rstrip(ends) or translation
    return translation
