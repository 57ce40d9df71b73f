"""Documents: many texts translated in chunks that fit the request limits, files (.txt, .html, .srt, .md)
translated with their structure kept, and a small in-memory store the translated files are downloaded from.

* .txt: each non-blank line is a text; blank lines and line ends stay.
* .srt: each cue's text lines are one text (joined by a space); numbers and timings stay; a cue without a timing
  line is a 400 naming its line (a file that is not SubRip is not returned untranslated).
* .md: code fences and table rules stay; a line's markdown prefix (``#``, ``-``, ``1.``, ``>``) stays and the
  rest is a text.
* .html / .htm: ``service.markup``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from moe_specialists.service.markup import texts_of, translate_markup
from moe_specialists.service.translation_errors import InvalidInput, TooLarge

Translate = Callable[[list[str]], Awaitable[list[str]]]
MEDIA_TYPES = {".txt": "text/plain", ".html": "text/html", ".htm": "text/html", ".srt": "application/x-subrip",
               ".md": "text/markdown"}
FILE_TYPES = tuple(MEDIA_TYPES)


def file_type(filename: str | None) -> tuple[str, str]:
    """(the file's base name, its lower-case suffix) of an upload; ``InvalidInput`` for no name or a type not in
    ``FILE_TYPES``."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    if not name:
        raise InvalidInput("invalid_request", f"the file has no name; send one ending in {', '.join(FILE_TYPES)}",
                           accepted=list(FILE_TYPES))
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix not in FILE_TYPES:
        raise InvalidInput("unsupported_file", f"file type {suffix or '(none)'!r} is not accepted; accepted: "
                           f"{', '.join(FILE_TYPES)}", accepted=list(FILE_TYPES))
    return name, suffix


def attachment(name: str) -> str:
    """The Content-Disposition of a download named ``name`` (RFC 6266: an ASCII fallback, and the name itself
    percent-encoded as UTF-8)."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def read_text(raw: bytes, max_chars: int) -> str:
    """An uploaded file as text (UTF-8, a BOM dropped): ``InvalidInput`` when it is not UTF-8, ``TooLarge`` over
    ``max_chars`` characters. Read at most ``4 * max_chars + 1`` bytes of the upload: more cannot fit."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        if len(raw) > 4 * max_chars:  # cut inside a character at the read limit: too long either way
            raise TooLarge("file_too_long", f"the file has more than {max_chars} characters",
                           limit=max_chars) from None
        raise InvalidInput("invalid_file", "the file is not UTF-8 text") from None
    if len(text) > max_chars:
        raise TooLarge("file_too_long", f"the file has more than {max_chars} characters", limit=max_chars)
    return text


def check_file(suffix: str, text: str) -> None:
    """Refuse, before anything is translated, a file whose structure is broken (SubRip: ``srt_cues``)."""
    if suffix == ".srt":
        srt_cues(text)


def detection_sample(suffix: str, text: str) -> str:
    """What the source language of a file is detected from: its first 2000 characters of text (markup's text
    nodes for html)."""
    return " ".join(texts_of(text) if suffix in (".html", ".htm") else text.split())[:2000]


def chunks(texts: list[str], max_texts: int, max_chars: int) -> list[list[str]]:
    """Consecutive groups of at most ``max_texts`` texts and ``max_chars`` characters (a longer text alone)."""
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for text in texts:
        if current and (len(current) >= max_texts or size + len(text) > max_chars):
            out.append(current)
            current, size = [], 0
        current.append(text)
        size += len(text)
    if current:
        out.append(current)
    return out


async def _lines(lines: list[str], picks: list[tuple[int, str, str, str]], translate: Translate) -> str:
    """Put translations into ``lines``: picks are (line index, prefix, text, suffix)."""
    answers = await translate([text for _, _, text, _ in picks]) if picks else []
    for (i, prefix, _, suffix), answer in zip(picks, answers, strict=True):
        lines[i] = prefix + answer + suffix
    return "".join(lines)


async def translate_txt(text: str, translate: Translate) -> str:
    lines = text.splitlines(keepends=True)
    picks = []
    for i, line in enumerate(lines):
        body = line.rstrip("\r\n")
        if body.strip():
            lead = body[: len(body) - len(body.lstrip())]
            picks.append((i, lead, body.strip(), line[len(body.rstrip()):]))
    return await _lines(lines, picks, translate)


_TIMING = re.compile(r"^\d{1,2}:\d{2}:\d{2}[,.]\d{1,3}\s*-->\s*\d{1,2}:\d{2}:\d{2}[,.]\d{1,3}")


def srt_cues(text: str) -> list[tuple[list[str], str]]:
    """SubRip cues as (number and timing lines, text lines joined by a space); cues are separated by blank
    lines. ``InvalidInput`` naming the line where a cue's timing line should be when it has none."""
    lines = text.splitlines()
    cues: list[tuple[list[str], str]] = []
    block: list[str] = []
    for n, line in enumerate([*lines, ""], 1):
        if line.strip():
            block.append(line)
            continue
        if not block:
            continue
        start = n - len(block)
        at = next((i for i, b in enumerate(block) if _TIMING.match(b.strip())), None)
        if at is None:
            where = 1 if block[0].strip().isdigit() and len(block) > 1 else 0
            raise InvalidInput(
                "invalid_srt", f"line {start + where} of the SubRip file, {block[where][:80]!r}, is not a timing "
                "line: each cue is a number, a line 'HH:MM:SS,mmm --> HH:MM:SS,mmm' (e.g. 00:00:01,000 --> "
                "00:00:02,500), then its text", line=start + where)
        cues.append((block[: at + 1], " ".join(b.strip() for b in block[at + 1:])))
        block = []
    return cues


async def translate_srt(text: str, translate: Translate) -> str:
    """SubRip: each cue's text translated, its number and timing kept; a cue without a timing line is refused
    (``srt_cues``) rather than returned untranslated."""
    newline = "\r\n" if "\r\n" in text else "\n"
    cues = srt_cues(text)
    answers = await translate([body for _, body in cues if body]) if any(b for _, b in cues) else []
    it = iter(answers)
    out = [newline.join([*head, next(it)] if body else head) for head, body in cues]
    return (newline * 2).join(out) + newline


_MD_PREFIX = re.compile(r"^(\s*(?:#{1,6}\s+|[-*+]\s+(?:\[[ xX]\]\s+)?|\d+[.)]\s+|>\s?)*)")
_MD_RULE = re.compile(r"^\s*(?:[-*_]\s*){3,}$|^\s*\|?(?:\s*:?-+:?\s*\|)+\s*:?-*:?\s*\|?\s*$")


async def translate_md(text: str, translate: Translate) -> str:
    lines = text.splitlines(keepends=True)
    picks, fenced = [], False
    for i, line in enumerate(lines):
        body = line.rstrip("\r\n")
        if body.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or not body.strip() or _MD_RULE.match(body) or body.startswith("    "):
            continue
        prefix = _MD_PREFIX.match(body).group(1)  # type: ignore[union-attr]
        rest = body[len(prefix):]
        if rest.strip():
            picks.append((i, prefix, rest.strip(), rest[len(rest.rstrip()):] + line[len(body):]))
    return await _lines(lines, picks, translate)


async def translate_file(name: str, text: str, translate: Translate) -> str:
    """The translated file text; ``ValueError`` for a type not in ``FILE_TYPES``."""
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix == ".txt":
        return await translate_txt(text, translate)
    if suffix == ".srt":
        return await translate_srt(text, translate)
    if suffix == ".md":
        return await translate_md(text, translate)
    if suffix in (".html", ".htm"):
        return await translate_markup(text, translate, "html")
    raise ValueError(f"file type {suffix or '(none)'!r} of {name!r} is not accepted; accepted: {', '.join(FILE_TYPES)}")


@dataclass
class StoredFile:
    name: str
    content: bytes
    media_type: str
    created: float


class FileStore:
    """Translated files kept in memory for download: at most ``max_files`` and ``max_bytes``, each for
    ``ttl_s`` seconds; the oldest go first."""

    def __init__(self, max_files: int = 100, max_bytes: int = 64 * 2**20, ttl_s: float = 3600):
        self.max_files, self.max_bytes, self.ttl_s = max_files, max_bytes, ttl_s
        self.files: OrderedDict[str, StoredFile] = OrderedDict()

    def put(self, name: str, content: bytes, media_type: str) -> str:
        """Store and return the download name ``<uuid>.<name>``."""
        key = f"{uuid.uuid4().hex}.{name}"
        self.files[key] = StoredFile(name, content, media_type, time.monotonic())
        self._evict()
        return key

    def get(self, key: str) -> StoredFile | None:
        self._evict()
        return self.files.get(key)

    def _evict(self) -> None:
        now = time.monotonic()
        while self.files and (
            len(self.files) > self.max_files
            or sum(len(f.content) for f in self.files.values()) > self.max_bytes
            or now - next(iter(self.files.values())).created > self.ttl_s
        ):
            self.files.popitem(last=False)
