"""Translation pairs for recovery tuning: reading them (FLORES-style folders, jsonl rows of two shapes, plain
or gzipped), English passages for distillation, reversing distilled pairs, writing and fingerprinting them."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moe_specialists.pruning.data import Orientation, directions_for, is_parallel, language_code, read_parallel

# Rows of the training corpus whose "source" starts with these are independent captions of one image, not
# translations of each other (Multi30k task 2): never train on them.
NOT_TRANSLATIONS = ("multi30k_task2",)


@dataclass(frozen=True)
class Pair:
    """One training example: translate ``src`` from language ``source`` to ``target``; ``tgt`` is the answer."""

    source: str
    target: str
    src: str
    tgt: str


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e})") from e


def read_pairs(
    data: str | Path,
    languages: list[str] | None = None,
    direction: Orientation = "to",
    split: str = "dev",
    limit: int | None = None,
    pivot: str = "en",
) -> list[Pair]:
    """Translation pairs from parallel data (``pruning.data``), a ``{"source","target","src","tgt"}`` jsonl or a
    ``{"lang","en","xx"}`` jsonl (optionally .gz). ``languages`` (non-pivot) and ``direction`` select the
    pairs of folders and ``{"lang","en","xx"}`` rows (``to``: pivot->L); ``{"source",...}`` rows are taken as
    they are, filtered to ``languages`` when given. ``limit``: the first N pairs of each direction."""
    if is_parallel(data):
        if not languages:
            raise ValueError(f"parallel data ({data}) needs languages (e.g. -l de,fr)")
        pairs = directions_for(languages, direction, pivot)
        texts = read_parallel(data, split, sorted({x for p in pairs for x in p}), limit)
        return [Pair(s, t, a, b) for s, t in pairs for a, b in zip(texts[s], texts[t], strict=True)]
    path = Path(data)
    if not path.is_file():
        raise ValueError(f"no training data at {path}: give parallel data (flores+, sample, a FLORES-style folder) "
                         "or a .jsonl(.gz) file")
    pivot = language_code(pivot)
    wanted = {language_code(lang) for lang in languages or []}
    allowed = set(directions_for(sorted(wanted), direction, pivot)) if wanted else None
    out: list[Pair] = []
    per_direction: dict[tuple[str, str], int] = {}
    for row in _jsonl_rows(path):
        if {"source", "target", "src", "tgt"} <= row.keys():
            candidates = [Pair(_code(row["source"], path), _code(row["target"], path), row["src"], row["tgt"])]
            if wanted:
                candidates = [p for p in candidates if {p.source, p.target} - {pivot} <= wanted]
        elif {"lang", "en", "xx"} <= row.keys():
            if str(row.get("source", "")).startswith(NOT_TRANSLATIONS):
                continue
            lang = _code(row["lang"], path)
            candidates = [Pair(pivot, lang, row["en"], row["xx"]), Pair(lang, pivot, row["xx"], row["en"])]
            candidates = [
                p
                for p in candidates
                if (allowed is None and (direction == "both" or (p.source == pivot) == (direction == "to")))
                or (allowed is not None and (p.source, p.target) in allowed)
            ]
        else:
            raise ValueError(f"{path}: rows need the keys source, target, src, tgt or lang, en, xx; got {sorted(row)}")
        for p in candidates:
            key = (p.source, p.target)
            if limit is not None and per_direction.get(key, 0) >= limit:
                continue
            if p.src.strip() and p.tgt.strip():
                per_direction[key] = per_direction.get(key, 0) + 1
                out.append(p)
    if not out:
        raise ValueError(f"no pairs in {path} for languages {sorted(wanted) or 'any'} and direction {direction!r}")
    return out


def _code(code: str, path: Path) -> str:
    try:
        return language_code(code)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def read_passages(data: str | Path, split: str = "dev", limit: int | None = None, pivot: str = "en") -> list[str]:
    """English passages for distillation: the ``split`` of parallel data (``pruning.data``), the ``en``
    field of ``{"lang","en","xx"}`` rows (deduplicated, order kept), the ``src`` of pivot-source
    ``{"source",...}`` rows, or the lines of a text file."""
    path = Path(data)
    if is_parallel(data):
        lines = read_parallel(data, split, [pivot])[language_code(pivot)]
    elif path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = []
        for row in _jsonl_rows(path):
            if "en" in row and not str(row.get("source", "")).startswith(NOT_TRANSLATIONS):
                lines.append(row[pivot] if pivot in row else row["en"])
            elif row.get("source") == pivot and "src" in row:
                lines.append(row["src"])
        lines = list(dict.fromkeys(lines))
    lines = [x for x in lines if x.strip()]
    return lines[:limit] if limit else lines


def with_reversed(pairs: list[Pair], direction: Orientation) -> list[Pair]:
    """Distilled pivot->X pairs for training in ``direction``: ``to`` as they are, ``from`` each reversed (the
    parent's translation as the source, the original passage as the target, as in back-translation),
    ``both`` the pairs followed by their reverses."""
    reverse = [Pair(p.target, p.source, p.tgt, p.src) for p in pairs]
    return {"to": pairs, "from": reverse, "both": pairs + reverse}[direction]


def pairs_fingerprint(pairs: Iterable[Pair]) -> str:
    """sha256 over the JSON of every (source, target, src, tgt), in training order."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.source, p.target, p.src, p.tgt], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def write_pairs(pairs: Iterable[Pair], path: str | Path) -> Path:
    """A jsonl (gzipped when the name ends in .gz) of ``{"source","target","src","tgt"}`` rows that
    ``read_pairs`` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
    return path
