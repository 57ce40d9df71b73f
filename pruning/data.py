"""Calibration and evaluation data: multi-way parallel passages, and the translation prompts built from them.

A data source holds splits (``dev``, ``devtest``) of line-aligned passages, line i of every language being the
same passage. ``--data`` names one (``parallel_source``):

- ``flores+`` (the default): FLORES+ on the Hugging Face hub (``FLORES_PLUS_REPO`` at ``FLORES_PLUS_REVISION``,
  files ``<split>/<code>.jsonl``, rows ordered by ``id``), fetched once into the hub cache. It is gated: accept
  its terms on the dataset's page and log in (``hf auth login`` or ``HF_TOKEN``). ``flores+@REVISION`` picks
  another revision.
- ``sample``: the small parallel sample shipped with the project (``pruning/sample``: everyday sentences written
  for it, in every language the bundled translator speaks): demos and tests.
- a folder ``DIR``: ``DIR/<split>/<lang>.txt``, one passage per line (FLORES-style).

Language codes are normalised (``models.languages.canonical``: ``de``, ``deu``, ``deu_Latn`` are one language),
in requests and in file names. A calibration sequence for direction S->T is the whole conversation "translate
this passage from S to T" + passage + translation (the reference, or the model's own output when generating);
plain passages (no prompt) in each language feed the routing-divergence metric.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from moe_specialists.models.languages import UnknownLanguage, canonical, macro_canonical
from moe_specialists.models.prompts import render

Orientation = Literal["to", "from", "both"]  # which way round the pivot: en->L, L->en, both (a pair is "en-de")
# what a calibration sequence's translation is: the model's own greedy output (the paper's choice) or the FLORES
# reference (teacher forcing: one forward pass, no generation)
Routing = Literal["generated", "reference"]

SAMPLE = "sample"
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
FLORES_PLUS = "flores+"
FLORES_PLUS_REPO = "openlanguagedata/flores_plus"
FLORES_PLUS_REVISION = "5fec6c13f9e5a4db2f745d4ec0d7c9721ddc4f06"
FLORES_PLUS_PAGE = f"https://huggingface.co/datasets/{FLORES_PLUS_REPO}"
DEFAULT_DATA = FLORES_PLUS
DATA_HELP = "--data DIR (a folder of <split>/<lang>.txt files) or --data sample (the sample shipped with the project)"


class DataError(ValueError):
    """Data that cannot be used (missing, misaligned, unreachable); the message says what is there or what to do."""


def check_routing(routing: str) -> Routing:
    """``routing`` itself, or ValueError naming the accepted values."""
    if routing not in get_args(Routing):
        raise ValueError(f"routing must be one of {list(get_args(Routing))}, not {routing!r}")
    return routing  # type: ignore[return-value]


def language_code(code: str) -> str:
    """The canonical code of a requested language; ``DataError`` naming the accepted forms."""
    try:
        return canonical(code)
    except UnknownLanguage:
        raise DataError(f"unknown language {code[:40]!r}: give BCP-47 (de, zh-Hant), ISO 639 (deu) or FLORES-200 "
                        "(deu_Latn) codes") from None


class ParallelSource(Protocol):
    name: str

    def languages(self, split: str) -> dict[str, str]:
        """``macro_canonical`` code -> where its passages are (a file name) for ``split``; DataError when there is
        no such split."""
        ...

    def lines(self, split: str, where: str) -> list[str]:
        """The passages of one language, in order."""
        ...


def read_parallel(data: str | Path, split: str, langs: list[str], limit: int | None = None) -> dict[str, list[str]]:
    """Line-aligned passages of each language (canonical code -> the first ``limit`` passages); errors name
    what the data has."""
    return read_from(parallel_source(data), split, langs, limit)


def read_from(source: ParallelSource, split: str, langs: list[str], limit: int | None = None) -> dict[str, list[str]]:
    files = source.languages(split)
    wanted = {language_code(lang): macro_canonical(lang) for lang in langs}  # as asked -> as the files are matched
    missing = [lang for lang in langs if wanted[language_code(lang)] not in files]
    if missing:
        raise DataError(f"no {split} passages for {missing} in {source.name}; it has {sorted(files)}")
    texts = {code: source.lines(split, files[key]) for code, key in wanted.items()}
    counts = {code: len(lines) for code, lines in texts.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{source.name} {split}: parallel files are not line-aligned: line counts {counts}")
    return {code: lines[:limit] if limit else lines for code, lines in texts.items()}


def available_languages(data: str | Path, split: str) -> list[str]:
    """The codes ``data`` has passages of in ``split`` (``macro_canonical``: zh for FLORES+'s cmn_Hans)."""
    return sorted(parallel_source(data).languages(split))


def is_parallel(data: str | Path) -> bool:
    """Whether ``data`` names a parallel source (``flores+``, ``sample`` or a folder), not a file of pairs."""
    text = str(data)
    return text in (FLORES_PLUS, SAMPLE) or text.startswith(FLORES_PLUS + "@") or Path(data).expanduser().is_dir()


def parallel_source(data: str | Path) -> ParallelSource:
    """The source ``--data`` names: ``flores+[@REVISION]``, ``sample`` or a folder."""
    text = str(data)
    if text == FLORES_PLUS or text.startswith(FLORES_PLUS + "@"):
        return HubSource(FLORES_PLUS_REPO, text.partition("@")[2] or FLORES_PLUS_REVISION)
    if text == SAMPLE:
        return FolderSource(SAMPLE_DIR, "the shipped sample (--data sample)")
    path = Path(data).expanduser()
    if not path.is_dir():
        raise DataError(f"--data {text}: no such folder; give {DATA_HELP}, or leave it out for FLORES+ from the hub")
    return FolderSource(path, str(path))


@dataclass(frozen=True)
class FolderSource:
    """``root/<split>/<lang>.txt`` files."""

    root: Path
    name: str

    def languages(self, split: str) -> dict[str, str]:
        folder = self.root / split
        if not folder.is_dir():
            splits = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise DataError(f"no split {split!r} in {self.name}: expected a folder {folder} of <lang>.txt files; "
                            f"splits there: {splits}")
        out: dict[str, str] = {}
        for path in sorted(folder.glob("*.txt")):
            try:
                out.setdefault(macro_canonical(path.stem), path.name)
            except UnknownLanguage:
                continue  # not a language file
        if not out:
            raise DataError(f"{folder} has no <lang>.txt files (e.g. en.txt, de.txt); give {DATA_HELP}")
        return out

    def lines(self, split: str, where: str) -> list[str]:
        return (self.root / split / where).read_text(encoding="utf-8").splitlines()


@dataclass(frozen=True)
class HubSource:
    """A FLORES+-layout dataset on the hub: ``<split>/<code>.jsonl`` rows with ``id`` and ``text``, read through
    the hub cache (``huggingface_hub``; with ``HF_HUB_OFFLINE=1`` only what is cached)."""

    repo: str
    revision: str

    @property
    def name(self) -> str:
        return f"FLORES+ ({self.repo}@{self.revision[:12]})"

    @cached_property
    def files(self) -> list[str]:
        """Every file of the dataset at the revision: the hub's listing, or the cache's when offline."""
        from huggingface_hub import HfApi, constants
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        if not constants.HF_HUB_OFFLINE:
            try:
                return HfApi().list_repo_files(self.repo, repo_type="dataset", revision=self.revision)
            except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as e:
                cached = self._cached_files()
                if cached:
                    return cached
                raise self._unreachable(e) from None
        cached = self._cached_files()
        if not cached:
            raise DataError(f"no --data given, and {self.name} is not in the hub cache while the hub is offline "
                            f"(HF_HUB_OFFLINE=1): give {DATA_HELP}")
        return cached

    def _cached_files(self) -> list[str]:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        snapshot = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=self.repo, repo_type="dataset")
        snapshot = snapshot / "snapshots" / self.revision
        return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())

    def _unreachable(self, error: Exception) -> DataError:
        from huggingface_hub.errors import GatedRepoError

        if isinstance(error, GatedRepoError):
            why = (f"it is gated: accept its terms at {FLORES_PLUS_PAGE} and log in (`hf auth login`, or set "
                   "HF_TOKEN)")
        else:
            why = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return DataError(f"{self.name} cannot be read from the hub ({why}); or give {DATA_HELP}")

    def languages(self, split: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for file in self.files:
            folder, _, stem = file.removesuffix(".jsonl").rpartition("/")
            if folder == split and file.endswith(".jsonl"):
                try:
                    out.setdefault(macro_canonical(stem), file)
                except UnknownLanguage:
                    continue
        if not out:
            splits = sorted({f.split("/")[0] for f in self.files if f.endswith(".jsonl") and "/" in f})
            raise DataError(f"no split {split!r} in {self.name}; its splits: {splits}")
        return out

    def lines(self, split: str, where: str) -> list[str]:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            path = hf_hub_download(self.repo, where, repo_type="dataset", revision=self.revision)
        except LocalEntryNotFoundError:
            raise DataError(f"{where} of {self.name} is not in the hub cache while the hub is offline: "
                            f"give {DATA_HELP}") from None
        except (HfHubHTTPError, OSError) as e:
            raise self._unreachable(e) from None
        return jsonl_texts(Path(path))


def jsonl_texts(path: Path) -> list[str]:
    """The ``text`` of each row of a FLORES+ jsonl file, ordered by ``id``."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append((int(row["id"]), str(row["text"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path}:{n}: not a FLORES+ row with an id and a text ({e})") from None
    return [text for _, text in sorted(rows)]


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


def directions_for(languages: list[str], direction: Orientation, pivot: str = "en") -> list[tuple[str, str]]:
    """(source, target) pairs of canonical codes: 'to' = pivot->L, 'from' = L->pivot, 'both' = both, for every
    L (any language code, normalised)."""
    if direction not in ("to", "from", "both"):
        raise ValueError(f"direction must be 'to', 'from' or 'both', not {direction!r}")
    pivot = language_code(pivot)
    pairs = []
    for lang in dict.fromkeys(language_code(lang) for lang in languages):
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
    data: str | Path,
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
    texts = read_parallel(data, split, langs, limit)
    seqs = []
    for src, tgt in pairs:
        for i, (s, t) in enumerate(zip(texts[src], texts[tgt], strict=True)):
            seqs.append(CalibrationSequence(f"{src}-{tgt}", render(tokenizer, src, tgt, s, t), False, i, src, tgt, s))
    if with_passages:
        for lang in langs:
            seqs.extend(CalibrationSequence(lang, p, True, i) for i, p in enumerate(texts[lang]))
    return seqs
