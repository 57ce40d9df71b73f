"""Glossary terms enforced around the model, not by asking it: before generation each source-term occurrence
in a segment becomes a placeholder (``X1``, ``X2``, ...: a letter and a number, which the bundled translator
copies as it copies model numbers and codes), and after generation each placeholder becomes its target term
(``restore``). When a placeholder comes back missing, twice or glued to a word (``X1e``), the segment is
translated again without placeholders and every required target term is ensured deterministically
(``ensure``): kept when the model wrote it (any case, then written as the glossary spells it), else the
source term the model copied is replaced by it, else it is appended in parentheses. Each term occurrence is
counted by the way it got into the output (``HOW``).

Matching: whole words (not inside a longer word; no word boundary is asked at a CJK/Thai edge, where words
touch), longest term first; a term with a capital letter matches with its case, an all-lowercase one in any
case ("server" matches "Server" at a sentence start). In markup, text inside tags is never touched."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

HOW = ("placeholder", "model", "replaced", "appended")
_LETTERS = "XYZQKJ"
_TAG = re.compile(r"<[^>]*>")
_END = re.compile(r"[.!?。！？:;…]*[\"'»”)]*\s*$")


def _spaced(c: str) -> bool:
    """True for a word character of a script that separates words (a boundary is asked there)."""
    o = ord(c)
    cjk = 0x0E00 <= o <= 0x0EFF or 0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or \
        0xF900 <= o <= 0xFAFF
    return (c.isalnum() or c == "_") and not cjk


def _alternative(term: str) -> str:
    body = re.escape(term)
    if term == term.lower():
        body = f"(?i:{body})"
    head = r"(?<!\w)" if _spaced(term[0]) else ""
    tail = r"(?!\w)" if _spaced(term[-1]) else ""
    return head + body + tail


@dataclass(frozen=True)
class Terms:
    """A dictionary's entries compiled for matching."""

    entries: tuple[tuple[str, str], ...]
    pattern: re.Pattern[str]
    exact: dict[str, str]
    folded: dict[str, str]

    def target(self, found: str) -> str:
        """The target term of a matched source text."""
        return self.exact.get(found) or self.folded[found.lower()]


def compile_terms(entries: tuple[tuple[str, str], ...]) -> Terms:
    """One alternation of every source term, longest first (a cased term before its lowercase twin)."""
    assert entries, "a dictionary has entries"
    order = sorted(entries, key=lambda e: (-len(e[0]), e[0] == e[0].lower()))
    pattern = re.compile("|".join(_alternative(s) for s, _ in order))
    exact = {s: t for s, t in entries if s != s.lower()}
    folded = {s.lower(): t for s, t in entries if s == s.lower()}
    return Terms(tuple(entries), pattern, exact, folded)


@dataclass(frozen=True)
class Protected:
    """A segment as sent (``text``), the source it was made from, and its slots: (placeholder, target term,
    source text matched), one per occurrence, in order."""

    source: str
    text: str
    slots: tuple[tuple[str, str, str], ...]


def _letter(text: str) -> str:
    """A placeholder letter that no ``<letter><digits>`` word of ``text`` uses already."""
    for letter in _LETTERS:
        if not re.search(rf"(?<![A-Za-z0-9]){letter}\d", text):
            return letter
    return _LETTERS[0]


def occurrences(text: str, terms: Terms, markup: bool = False) -> list[re.Match[str]]:
    """The term matches of ``text``, left to right, none inside a tag when ``markup``."""
    tags = [m.span() for m in _TAG.finditer(text)] if markup else []
    return [m for m in terms.pattern.finditer(text)
            if not any(a < m.end() and m.start() < b for a, b in tags)]


def protect(text: str, terms: Terms, markup: bool = False) -> Protected:
    """``text`` with each term occurrence replaced by its placeholder."""
    letter = _letter(text)
    parts, slots, at = [], [], 0
    for n, m in enumerate(occurrences(text, terms, markup), 1):
        placeholder = f"{letter}{n}"
        parts += [text[at:m.start()], placeholder]
        slots.append((placeholder, terms.target(m.group()), m.group()))
        at = m.end()
    return Protected(text, "".join(parts) + text[at:], tuple(slots))


def _placeholder(p: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(p)}(?![A-Za-z0-9])")


def restore(output: str, protected: Protected) -> str | None:
    """The output with each placeholder replaced by its target term; None unless every placeholder is there
    exactly once, standing alone, and no other ``<letter><digit>`` word of the same letter was made up."""
    for placeholder, _, _ in protected.slots:
        if len(_placeholder(placeholder).findall(output)) != 1:
            return None
    letter = protected.slots[0][0][0] if protected.slots else ""
    if letter and len(re.findall(rf"(?<![A-Za-z0-9]){letter}\d+", output)) != len(protected.slots):
        return None
    for placeholder, target, _ in protected.slots:
        output = _placeholder(placeholder).sub(lambda _m, t=target: t, output, count=1)
    return output


def _word(term: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(_alternative(term.lower() if ignore_case else term))


def append(output: str, target: str) -> str:
    """``output`` with `` (target)`` inserted before its final punctuation."""
    end = _END.search(output)
    at = end.start() if end else len(output)
    return f"{output[:at]} ({target}){output[at:]}" if output[:at] else f"{target}{output[at:]}"


def ensure(output: str, protected: Protected) -> tuple[str, list[str]]:
    """A translation made without placeholders, with every target term of ``protected`` in it, and how each
    occurrence got there (``HOW[1:]``): the model's (in any case, respelled), a copied source term replaced, or
    appended."""
    hows = []
    for _, target, source in protected.slots:
        found = _word(target, ignore_case=True).search(output)
        if found:
            output = output[:found.start()] + target + output[found.end():]
            hows.append("model")
            continue
        copied = _word(source, ignore_case=False).search(output)
        if copied:
            output = output[:copied.start()] + target + output[copied.end():]
            hows.append("replaced")
        else:
            output = append(output, target)
            hows.append("appended")
    return output, hows


async def enforce(protected: list[Protected], outputs: list[str],
                  again: Callable[[list[int]], Awaitable[list[str]]]) -> tuple[list[str], Counter[str]]:
    """The final text of each segment (``outputs``: the model's answers to ``protected[i].text``): placeholders
    restored, else ``again(indices)`` (those segments' sources translated without placeholders) with their terms
    ensured; and how many term occurrences went each way (``HOW``)."""
    final: list[str | None] = [restore(o, x) if x.slots else o for o, x in zip(outputs, protected, strict=True)]
    hows: Counter[str] = Counter()
    for text, x in zip(final, protected, strict=True):
        if text is not None:
            hows["placeholder"] += len(x.slots)
    redo = [i for i, text in enumerate(final) if text is None]
    for i, answer in zip(redo, await again(redo) if redo else [], strict=True):
        final[i], ways = ensure(answer, protected[i])
        hows.update(ways)
    return [t if t is not None else "" for t in final], hows
