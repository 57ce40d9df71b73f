"""Calibration data: translation prompts built from line-aligned parallel files (FLORES-style).

``<data_dir>/<split>/<lang>.txt`` holds one passage per line, line i of every language being the same passage
(multi-way parallel). A calibration sequence for direction S->T is the whole conversation "translate this
passage from S to T" + passage + translation (the reference, or the model's own output when generating).
Plain passages (no prompt) in each language feed the routing-divergence metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from moe_specialists.models.prompts import LANGUAGE_NAMES, render

Orientation = Literal["to", "from", "both"]  # which way round the pivot: en->L, L->en, both (a pair is "en-de")
# what a calibration sequence's translation is: the model's own greedy output (the paper's choice) or the FLORES
# reference (teacher forcing: one forward pass, no generation)
Routing = Literal["generated", "reference"]


def check_routing(routing: str) -> Routing:
    """``routing`` itself, or ValueError naming the accepted values."""
    if routing not in get_args(Routing):
        raise ValueError(f"routing must be one of {list(get_args(Routing))}, not {routing!r}")
    return routing  # type: ignore[return-value]


@dataclass(frozen=True)
class CalibrationSequence:
    """One sequence to route. ``group`` is the direction ("en-de") or, for a plain passage, the language."""

    group: str
    text: str
    passage: bool = False  # a plain passage for the divergence metric, not a calibration sequence
    index: int = 0  # line number in the parallel files
    source: str = ""  # for prompts: source language, target language and the passage
    target: str = ""
    source_text: str = ""


def available_languages(data_dir: str | Path, split: str) -> list[str]:
    folder = Path(data_dir) / split
    if not folder.is_dir():
        raise ValueError(f"no split {split!r} under {data_dir}: expected a folder {folder} of <lang>.txt files")
    return sorted(p.stem for p in folder.glob("*.txt"))


def read_parallel(data_dir: str | Path, split: str, langs: list[str], limit: int | None = None) -> dict[str, list[str]]:
    """Line-aligned passages of each language; errors name what exists."""
    have = available_languages(data_dir, split)
    missing = [lang for lang in langs if lang not in have]
    if missing:
        raise ValueError(f"languages {missing} not in {Path(data_dir) / split}; available: {have}")
    out = {}
    for lang in langs:
        lines = (Path(data_dir) / split / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        out[lang] = lines[:limit] if limit else lines
    counts = {lang: len(v) for lang, v in out.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"parallel files are not line-aligned: line counts {counts}")
    return out


def directions_for(languages: list[str], direction: Orientation, pivot: str = "en") -> list[tuple[str, str]]:
    """(source, target) pairs: 'to' = pivot->L, 'from' = L->pivot, 'both' = both, for every L."""
    for lang in [pivot, *languages]:
        if lang not in LANGUAGE_NAMES:
            raise ValueError(f"unknown language {lang!r}; known: {sorted(LANGUAGE_NAMES)}")
    if direction not in ("to", "from", "both"):
        raise ValueError(f"direction must be 'to', 'from' or 'both', not {direction!r}")
    pairs = []
    for lang in languages:
        if lang == pivot:
            continue
        if direction in ("to", "both"):
            pairs.append((pivot, lang))
        if direction in ("from", "both"):
            pairs.append((lang, pivot))
    if not pairs:
        raise ValueError(f"no translation direction: give at least one language other than {pivot!r}")
    return pairs


def calibration_sequences(
    tokenizer: Any,
    data_dir: str | Path,
    languages: list[str],
    direction: Orientation = "to",
    split: str = "dev",
    limit: int | None = None,
    pivot: str = "en",
    with_passages: bool = True,
) -> list[CalibrationSequence]:
    """Teacher-forced calibration sequences (reference translations) for every direction, plus plain
    passages in each language and the pivot (for the divergence) when ``with_passages``."""
    pairs = directions_for(languages, direction, pivot)
    langs = sorted({lang for pair in pairs for lang in pair})
    texts = read_parallel(data_dir, split, langs, limit)
    seqs = []
    for src, tgt in pairs:
        for i, (s, t) in enumerate(zip(texts[src], texts[tgt], strict=True)):
            seqs.append(CalibrationSequence(f"{src}-{tgt}", render(tokenizer, src, tgt, s, t), False, i, src, tgt, s))
    if with_passages:
        for lang in langs:
            seqs.extend(CalibrationSequence(lang, p, True, i) for i, p in enumerate(texts[lang]))
    return seqs
