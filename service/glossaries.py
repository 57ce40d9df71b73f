"""Glossaries as DeepL keeps them: a named set of dictionaries, each the entries (source term -> target term) of
one language pair; parsed from DeepL's TSV or CSV entry formats, validated, and stored per owner (an API key's
hash, or ``anonymous``) as one JSON file per glossary under ``<state_dir>/glossaries/<owner>/<id>.json``,
written atomically (a temporary file, then ``os.replace``), so a gateway restart finds them again.

Limits (DeepL's where it has one): a term and a name at most 1024 UTF-8 bytes, no control characters or Unicode
line separators in a term, no source term twice in a dictionary, at most ``max_entries`` entries per dictionary
(``MOE_MAX_GLOSSARY_ENTRIES``, default 10,000), 10 MiB of entries, 1000 glossaries per owner. Breaking one is
``InvalidGlossary`` (400); an unknown id is ``GlossaryNotFound`` (404)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from moe_specialists.service.quotas import key_label
from moe_specialists.service.terms import Terms, compile_terms
from moe_specialists.service.translation_errors import GlossaryNotFound, InvalidGlossary

FORMATS = ("tsv", "csv")
MAX_TERM_BYTES = 1024
MAX_ENTRIES_BYTES = 10 * 1024 * 1024
MAX_GLOSSARIES = 1000
FILE_VERSION = 1
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_OWNER = re.compile(r"^(anonymous|[0-9a-f]{12})$")


@dataclass(frozen=True)
class Dictionary:
    source_lang: str
    target_lang: str
    entries: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Glossary:
    glossary_id: str
    name: str
    creation_time: str
    dictionaries: tuple[Dictionary, ...] = field(default_factory=tuple)

    def dictionary(self, source: str, target: str) -> Dictionary | None:
        """The dictionary of the pair ``source -> target`` (canonical codes), if there is one."""
        return next((d for d in self.dictionaries if (d.source_lang, d.target_lang) == (source, target)), None)


def owner_of(api_keys: list[str], key: str | None) -> str:
    """Whose glossaries a request sees: its API key's hash (``quotas.key_label``) when the gateway checks keys,
    else one shared ``anonymous`` owner (any key is accepted then, so it identifies nobody)."""
    return key_label(key) if api_keys else "anonymous"


def pair_name(source: str, target: str) -> str:
    return f"{source}->{target}"


def check_term(term: str, where: str) -> str:
    """``term`` stripped, or ``InvalidGlossary`` when it is empty, too long or holds a control character."""
    term = term.strip()
    if not term:
        raise InvalidGlossary("invalid_glossary", f"Bad request: {where}: empty term")
    if len(term.encode()) > MAX_TERM_BYTES:
        raise InvalidGlossary("invalid_glossary", f"Bad request: {where}: a term is over {MAX_TERM_BYTES} bytes")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in term):
        raise InvalidGlossary("invalid_glossary", f"Bad request: {where}: a term holds a control character")
    return term


def _rows(text: str, entries_format: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line: TSV lines (``\n``, ``\r\n``) split at tabs, CSV read by the
    ``csv`` module."""
    if entries_format == "tsv":
        lines = [line.removesuffix("\r") for line in text.split("\n")]  # not splitlines: U+2028 is no line end
        return [(n, line.split("\t")) for n, line in enumerate(lines, 1) if line.strip()]
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        return [(reader.line_num, row) for row in reader if any(f.strip() for f in row)]
    except csv.Error as e:
        raise InvalidGlossary("invalid_glossary", f"Bad request: entries are not valid CSV: {e}") from None


def parse_entries(text: str, entries_format: str, source: str, target: str,
                  max_entries: int) -> tuple[tuple[str, str], ...]:
    """The (source, target) terms of DeepL's TSV (``source<TAB>target`` a line) or CSV (``source,target``, or
    ``source,target,source_lang,target_lang`` naming this pair) entries; blank lines skipped, terms stripped."""
    if entries_format not in FORMATS:
        raise InvalidGlossary("invalid_glossary", f"Bad request: entries_format {entries_format[:20]!r}; "
                              f"accepted: {', '.join(FORMATS)}")
    if len(text.encode()) > MAX_ENTRIES_BYTES:
        raise InvalidGlossary("invalid_glossary", f"Bad request: entries are over {MAX_ENTRIES_BYTES} bytes")
    out: dict[str, str] = {}
    for n, fields in _rows(text, entries_format):
        where = f"entry on line {n}"
        if entries_format == "csv" and len(fields) == 4:
            langs = (fields[2].strip().lower(), fields[3].strip().lower())
            if langs != (source.lower(), target.lower()):
                raise InvalidGlossary("invalid_glossary", f"Bad request: {where} is for {langs[0]}->{langs[1]}, "
                                      f"the dictionary for {source}->{target}")
            fields = fields[:2]
        if len(fields) != 2:
            sep = "a tab" if entries_format == "tsv" else "a comma"
            raise InvalidGlossary("invalid_glossary", f"Bad request: {where} has {len(fields)} fields; expected "
                                  f"a source and a target term separated by {sep}")
        s, t = check_term(fields[0], where), check_term(fields[1], where)
        if s in out:
            raise InvalidGlossary("invalid_glossary", f"Bad request: {where} duplicates source term {s[:80]!r}")
        out[s] = t
        if len(out) > max_entries:
            raise InvalidGlossary("invalid_glossary", f"Bad request: more than {max_entries} entries "
                                  "(MOE_MAX_GLOSSARY_ENTRIES)", limit=max_entries)
    if not out:
        raise InvalidGlossary("invalid_glossary", "Bad request: the dictionary has no entries")
    return tuple(out.items())


def to_tsv(entries: tuple[tuple[str, str], ...]) -> str:
    """DeepL's TSV: ``source<TAB>target`` lines."""
    return "\n".join(f"{s}\t{t}" for s, t in entries)


def check_name(name: str) -> str:
    """A glossary's name, stripped: 1 to 1024 UTF-8 bytes."""
    name = name.strip()
    if not name or len(name.encode()) > MAX_TERM_BYTES:
        raise InvalidGlossary("invalid_glossary", f"Bad request: name: give 1 to {MAX_TERM_BYTES} bytes")
    return name


def new_glossary(name: str, dictionaries: list[Dictionary], now: datetime | None = None) -> Glossary:
    """A glossary with a fresh id and DeepL's creation time format (``2026-12-03T17:31:56.123456Z``)."""
    name = check_name(name)
    if not dictionaries:
        raise InvalidGlossary("invalid_glossary", "Bad request: dictionaries: give at least one")
    pairs = [(d.source_lang, d.target_lang) for d in dictionaries]
    if len(set(pairs)) != len(pairs):
        raise InvalidGlossary("invalid_glossary", "Bad request: two dictionaries for one language pair")
    if any(s == t for s, t in pairs):
        raise InvalidGlossary("invalid_glossary", "Bad request: a dictionary's source and target are one language")
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return Glossary(str(uuid.uuid4()), name, stamp, tuple(dictionaries))


def merged(old: Dictionary, new: Dictionary, max_entries: int) -> Dictionary:
    """DeepL's v3 PATCH of a dictionary: ``new``'s entries update those of ``old`` with the same source term
    and the others are added (at most ``max_entries`` in all)."""
    entries = dict(old.entries) | dict(new.entries)
    if len(entries) > max_entries:
        raise InvalidGlossary("invalid_glossary", f"Bad request: more than {max_entries} entries "
                              "(MOE_MAX_GLOSSARY_ENTRIES)", limit=max_entries)
    return Dictionary(old.source_lang, old.target_lang, tuple(entries.items()))


def with_dictionary(g: Glossary, d: Dictionary) -> Glossary:
    """``g`` with ``d`` in place of its dictionary of the same pair, or added after the others."""
    pair = (d.source_lang, d.target_lang)
    kept = [x for x in g.dictionaries if (x.source_lang, x.target_lang) != pair]
    at = next((i for i, x in enumerate(g.dictionaries) if (x.source_lang, x.target_lang) == pair), len(kept))
    return Glossary(g.glossary_id, g.name, g.creation_time, tuple(kept[:at] + [d] + kept[at:]))


def to_json(g: Glossary) -> dict:
    return {"version": FILE_VERSION, "glossary_id": g.glossary_id, "name": g.name, "creation_time": g.creation_time,
            "dictionaries": [{"source_lang": d.source_lang, "target_lang": d.target_lang,
                              "entries": [list(e) for e in d.entries]} for d in g.dictionaries]}


def from_json(data: dict) -> Glossary:
    assert data.get("version") == FILE_VERSION, f"glossary file version {data.get('version')}"
    dicts = tuple(Dictionary(d["source_lang"], d["target_lang"], tuple((s, t) for s, t in d["entries"]))
                  for d in data["dictionaries"])
    return Glossary(data["glossary_id"], data["name"], data["creation_time"], dicts)


def dictionary_for(g: Glossary, source: str, target: str) -> Dictionary:
    """The dictionary of ``g`` for the request's pair, or ``InvalidGlossary`` naming the pairs it has."""
    found = g.dictionary(source, target)
    if found is None:
        has = ", ".join(pair_name(d.source_lang, d.target_lang) for d in g.dictionaries)
        raise InvalidGlossary("glossary_pair", f"Bad request: glossary {g.glossary_id} has no dictionary for "
                              f"{pair_name(source, target)} (it has {has}); use a glossary of the request's "
                              "source_lang and target_lang")
    return found


class GlossaryStore:
    """Glossaries under ``root`` (``<state_dir>/glossaries``), one folder per owner; the compiled terms of the
    dictionaries last used are kept (``cache`` of them) against their file's (inode, mtime, size), so a glossary
    that another gateway replica edits or deletes in a shared state folder is read again, never served stale."""

    def __init__(self, root: Path, cache: int = 32):
        self.root = Path(root)
        self.cache = cache
        self._terms: dict[tuple[str, str, str, str, int, int, int], Terms] = {}

    def terms(self, owner: str, glossary_id: str, source: str, target: str) -> Terms:
        """The compiled terms of glossary ``glossary_id``'s dictionary for ``source -> target``."""
        try:
            stat = self._path(owner, glossary_id).stat()
        except FileNotFoundError:
            raise GlossaryNotFound("glossary_not_found", f"Glossary not found: {glossary_id!r}") from None
        key = (owner, glossary_id, source, target, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if key not in self._terms:
            found = compile_terms(dictionary_for(self.get(owner, glossary_id), source, target).entries)
            if len(self._terms) >= self.cache:
                self._terms.pop(next(iter(self._terms)))
            self._terms[key] = found
        return self._terms[key]

    def _folder(self, owner: str) -> Path:
        assert _OWNER.match(owner), owner
        return self.root / owner

    def _path(self, owner: str, glossary_id: str) -> Path:
        if not _ID.match(glossary_id):
            raise GlossaryNotFound("glossary_not_found", f"Glossary not found: {glossary_id[:80]!r}")
        return self._folder(owner) / f"{glossary_id}.json"

    def save(self, owner: str, g: Glossary) -> None:
        """Write ``g`` atomically (a temporary file in the same folder, fsynced, then ``os.replace``)."""
        folder = self._folder(owner)
        folder.mkdir(parents=True, exist_ok=True)
        self._forget(owner, g.glossary_id)
        if not self._path(owner, g.glossary_id).exists() and len(list(folder.glob("*.json"))) >= MAX_GLOSSARIES:
            raise InvalidGlossary("invalid_glossary", f"Bad request: this key has {MAX_GLOSSARIES} glossaries "
                                  "already; delete one first")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(to_json(g), f, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(owner, g.glossary_id))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, owner: str, glossary_id: str) -> Glossary:
        path = self._path(owner, glossary_id)
        try:
            return from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise GlossaryNotFound("glossary_not_found", f"Glossary not found: {glossary_id!r}") from None

    def list(self, owner: str) -> list[Glossary]:
        """Every glossary of ``owner``, oldest first."""
        folder = self._folder(owner)
        found = [from_json(json.loads(p.read_text(encoding="utf-8"))) for p in folder.glob("*.json")
                 if _ID.match(p.stem)] if folder.is_dir() else []
        return sorted(found, key=lambda g: (g.creation_time, g.glossary_id))

    def _forget(self, owner: str, glossary_id: str) -> None:
        self._terms = {k: v for k, v in self._terms.items() if k[:2] != (owner, glossary_id)}

    def delete(self, owner: str, glossary_id: str) -> None:
        self._forget(owner, glossary_id)
        try:
            self._path(owner, glossary_id).unlink()
        except FileNotFoundError:
            raise GlossaryNotFound("glossary_not_found", f"Glossary not found: {glossary_id!r}") from None
