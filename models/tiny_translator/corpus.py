"""Rebuild the English-X training pairs of the bundled translator from public test sets (none is stored here).

    python -m moe_specialists.models.tiny_translator.corpus --out pairs.jsonl.gz --flores FLORES_DIR

WMT news and Multi30k test sets come through sacrebleu's downloader and cache (the sets it lacks, as sacrebleu
datasets of the published files), the Tatoeba Challenge test sets from Helsinki-NLP/Tatoeba-Challenge. Both
directions of a WMT set count. Pairs with a side in FLORES dev/devtest (``--flores``), an empty side or one over
``max_chars`` characters are dropped, and repeats of a (lang, en, xx); gzipped JSON lines {"lang", "en", "xx",
"source"} are written and the pairs per (lang, source) printed.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import shutil
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from sacrebleu.dataset import DATASETS
from sacrebleu.dataset.base import Dataset
from sacrebleu.dataset.fake_sgml import FakeSGMLDataset
from sacrebleu.dataset.plain_text import PlainTextDataset

from moe_specialists.models.errors import describe_validation

LANGUAGES = ("de", "cs", "fr", "ru", "es", "zh", "ja")
FLORES_SPLITS = ("dev", "devtest")
TATOEBA_RELEASE = "v2021-08-07"
TATOEBA_SOURCE = f"tatoeba-test-{TATOEBA_RELEASE}"
TATOEBA_CODES = {"de": "deu", "cs": "ces", "fr": "fra", "ru": "rus", "es": "spa", "zh": "zho", "ja": "jpn"}
# The release's test files in the repository, at a fixed commit (data/release/README.md there gives the format).
TATOEBA_URL = ("https://raw.githubusercontent.com/Helsinki-NLP/Tatoeba-Challenge/f559ddf01cf3bfcc32cddf7e940218eaebe7158a"
               f"/data/release/test/{TATOEBA_RELEASE}/{TATOEBA_SOURCE}.{{pair}}.txt.gz")
MULTI30K_RAW = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
MSCOCO_MD5 = {"en": "a7b684e0edbef1d4a23660c8e8e743fd", "de": "e8cd6ec2bc8a11fc846fa48a46e3d0bb",
              "fr": "4995d10954a804d3cdfd907b9fd093e8"}


class SourceSet(NamedTuple):
    """One "source": the sacrebleu dataset holding it, the prefix of its language-pair keys there, which
    reference (0: the first) and the languages taken from it."""

    source: str
    dataset: str
    prefix: str
    ref: int
    languages: str


# Multi30k first, then WMT by year, as in the file the model was trained on (for cs newstest2020 and for
# newstest2019 it had none). The first of identical pairs wins, so newstest2020 comes before newstestB2020.
SOURCE_SETS = [SourceSet(*row) for row in (
    ("multi30k_test_2016_flickr", "multi30k/2016", "", 0, "cs de fr"),
    ("multi30k_test_2017_flickr", "multi30k/2017", "", 0, "de fr"),
    ("multi30k_test_2017_mscoco", "multi30k/2017", "mscoco.", 0, "de fr"),
    ("multi30k_test_2018_flickr", "multi30k/2018", "", 0, "cs de fr"),
    ("news-test2008", "wmt08", "", 0, "cs de es fr"),
    ("newssyscomb2009", "wmt16/dev", "newssyscomb2009.", 0, "cs de es fr"),
    ("newstest2009", "wmt09", "", 0, "cs de es fr"), ("newstest2010", "wmt10", "", 0, "cs de es fr"),
    ("newstest2011", "wmt11", "", 0, "cs de es fr"), ("newstest2012", "wmt12", "", 0, "cs de es fr"),
    ("newstest2012", "wmt16/dev", "newstest2012.", 0, "ru"),
    ("newstest2013", "wmt13", "", 0, "cs de es fr ru"), ("newstest2014", "wmt14/full", "", 0, "cs de fr ru"),
    ("newsdiscusstest2015", "wmt15", "", 0, "fr"), ("newstest2015", "wmt15", "", 0, "cs de ru"),
    ("newstest2016", "wmt16", "", 0, "cs de ru"), ("newstest2017", "wmt17", "", 0, "cs de ru zh"),
    ("newstest2018", "wmt18", "", 0, "cs de ru zh"), ("newstest2020", "wmt20", "", 0, "de ru zh ja"),
    ("newstestB2020", "wmt20/tworefs", "", 1, "de ru zh"), ("newstest2021", "wmt21", "", 0, "ja zh"),
)]
SOURCES = tuple(dict.fromkeys([t.source for t in SOURCE_SETS] + [TATOEBA_SOURCE]))


def _extra_datasets() -> dict[tuple[str, str], Dataset]:
    """(dataset, prefix) -> the sets sacrebleu does not define, as sacrebleu datasets of the published files:
    newssyscomb2009 and Russian newstest2012 from the WMT16 dev tarball (``dev/<set>-src.<l>.sgm``,
    ``dev/<set>-ref.<l>.sgm``), Multi30k 2017 MSCOCO from the multi30k/dataset repository
    (``test_2017_mscoco.<l>.gz``)."""
    pairs: dict[str, list[str]] = {}
    for name, langs in (("newssyscomb2009", "cs de es fr"), ("newstest2012", "ru")):
        for x in langs.split():
            for a, b in ((x, "en"), ("en", x)):
                pairs[f"{name}.{a}-{b}"] = [f"dev/{name}-src.{a}.sgm", f"dev/{name}-ref.{b}.sgm"]
    dev = FakeSGMLDataset("wmt16/dev", data=DATASETS["wmt16/dev"].data, md5=DATASETS["wmt16/dev"].md5, langpairs=pairs)
    mscoco = PlainTextDataset(
        "multi30k/2017", data=[f"{MULTI30K_RAW}test_2017_mscoco.{lang}.gz" for lang in MSCOCO_MD5],
        md5=list(MSCOCO_MD5.values()),
        langpairs={f"mscoco.en-{x}": [f"multi30k_2017.test_2017_mscoco.{lang}.gz" for lang in ("en", x)]
                   for x in ("de", "fr")})
    return {("wmt16/dev", "newssyscomb2009."): dev, ("wmt16/dev", "newstest2012."): dev,
            ("multi30k/2017", "mscoco."): mscoco}


def sacrebleu_dataset(name: str, prefix: str, cache: Path) -> Dataset:
    """The sacrebleu dataset ``name`` (one of ours where ``prefix`` is given) keeping its files in sacrebleu's
    layout under ``cache``: ``NAME/raw/`` the downloads, ``NAME/<name>.<pair>.<field>`` the text files."""
    dataset = _extra_datasets()[name, prefix] if prefix else copy.copy(DATASETS[name])
    dataset._outdir = os.path.join(cache, name)  # sacrebleu sets it from $SACREBLEU when it is imported
    dataset._rawdir = os.path.join(dataset._outdir, "raw")
    return dataset


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (gzipped if it ends in .gz), split at "\\n" only: str.splitlines would
    also split at U+2028 and the like, and misalign parallel files."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    return text.removesuffix("\n").split("\n") if text else []


def normalise(text: str) -> str:
    """Whitespace runs collapsed to one space, ends stripped (how sacrebleu cleans its segments)."""
    return " ".join(text.split())


def pair_lines(src: list[str], tgt: list[str], source_is_english: bool) -> list[tuple[str, str]]:
    """(en, xx) of line-aligned source and reference lines; ValueError if their counts differ."""
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} source lines but {len(tgt)} reference lines")
    return list(zip(src, tgt, strict=True) if source_is_english else zip(tgt, src, strict=True))


def parse_tatoeba(lines: Iterable[str]) -> list[tuple[str, str]]:
    """(en, xx) of Tatoeba Challenge test lines "src-lang TAB tgt-lang TAB src TAB tgt", whichever side is
    English ("eng"); lines without English or without four fields are skipped."""
    pairs = []
    for line in lines:
        fields = line.split("\t")
        if len(fields) == 4 and "eng" in fields[:2]:
            pairs.append((fields[2], fields[3]) if fields[0] == "eng" else (fields[3], fields[2]))
    return pairs


def flores_sentences(folder: Path, languages: Iterable[str]) -> dict[str, set[str]]:
    """language -> its normalised FLORES sentences, from ``folder/<split>/<lang>.txt`` of every split."""
    return {lang: {normalise(s) for split in FLORES_SPLITS for s in read_lines(folder / split / f"{lang}.txt")}
            for lang in ("en", *languages)}


def clean(rows: Iterable[dict[str, str]], flores: dict[str, set[str]], max_chars: int) -> Iterator[dict[str, str]]:
    """The rows, normalised, without FLORES sentences on either side, empty sides, sides over ``max_chars``
    characters or repeats of an earlier (lang, en, xx)."""
    seen: set[tuple[str, str, str]] = set()
    for row in rows:
        en, xx = normalise(row["en"]), normalise(row["xx"])
        key = (row["lang"], en, xx)
        if (not en or not xx or max(len(en), len(xx)) > max_chars or key in seen
                or en in flores.get("en", ()) or xx in flores.get(row["lang"], ())):
            continue
        seen.add(key)
        yield {"lang": row["lang"], "en": en, "xx": xx, "source": row["source"]}


def fetch_url(url: str, dest: Path) -> Path:
    """``dest``, downloaded from ``url`` unless it is there already (written under a temporary name first)."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        with urllib.request.urlopen(url, timeout=120) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out)
        part.replace(dest)
    return dest


def _comma_list(value: Any) -> Any:
    return [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value


def _one_of(accepted: tuple[str, ...], what: str) -> AfterValidator:
    def check(values: list[str]) -> list[str]:
        unknown = [x for x in values if x not in accepted]
        if unknown or not values:
            raise ValueError(f"unknown {what} {unknown}; accepted: {', '.join(accepted)}")
        return values
    return AfterValidator(check)


class CorpusConfig(BaseModel):
    """What ``build_corpus`` writes: ``out`` from the ``sources`` of ``languages``; ``cache`` is sacrebleu's
    download folder (None: $SACREBLEU, else ~/.sacrebleu), Tatoeba files go to its ``tatoeba/``."""

    model_config = ConfigDict(extra="forbid")

    out: Path
    languages: Annotated[list[str], BeforeValidator(_comma_list), _one_of(LANGUAGES, "languages")] = list(LANGUAGES)
    sources: Annotated[list[str], BeforeValidator(_comma_list), _one_of(SOURCES, "sources")] = list(SOURCES)
    flores: Path | None = None
    cache: Path | None = None
    max_chars: int = Field(399, gt=0, description="longest side kept, in characters (the trained file's limit)")

    @model_validator(mode="after")
    def _flores_complete(self) -> CorpusConfig:
        if self.flores is None:
            return self
        if not self.flores.is_dir():
            raise ValueError(f"FLORES folder {self.flores} not found; give a folder with dev/<lang>.txt and "
                             f"devtest/<lang>.txt files (FLORES dev and devtest, one passage per line)")
        missing = [f"{s}/{x}.txt" for s in FLORES_SPLITS for x in ("en", *self.languages)
                   if not (self.flores / s / f"{x}.txt").is_file()]
        if missing:
            raise ValueError(f"FLORES folder {self.flores} lacks {', '.join(missing)}; it needs "
                             f"<split>/<lang>.txt for splits {', '.join(FLORES_SPLITS)} and languages en, "
                             f"{', '.join(self.languages)}")
        return self


def raw_rows(config: CorpusConfig, cache: Path) -> Iterator[dict[str, str]]:
    """Every pair of the configured sources and languages, language by language, in SOURCE_SETS order, then
    Tatoeba; downloads what the cache lacks."""
    for lang in config.languages:
        for t in SOURCE_SETS:
            if t.source not in config.sources or lang not in t.languages.split():
                continue
            dataset = sacrebleu_dataset(t.dataset, t.prefix, cache)
            for pair in (f"{t.prefix}{lang}-en", f"{t.prefix}en-{lang}"):
                if pair in dataset.langpairs:
                    src = read_lines(dataset.get_source_file(pair))
                    ref = read_lines(dataset.get_reference_files(pair)[t.ref])
                    for en, xx in pair_lines(src, ref, source_is_english=pair.startswith(f"{t.prefix}en-")):
                        yield {"lang": lang, "en": en, "xx": xx, "source": t.source}
        if TATOEBA_SOURCE in config.sources:
            pair = "-".join(sorted(("eng", TATOEBA_CODES[lang])))
            path = fetch_url(TATOEBA_URL.format(pair=pair), cache / "tatoeba" / f"{TATOEBA_SOURCE}.{pair}.txt.gz")
            for en, xx in parse_tatoeba(read_lines(path)):
                yield {"lang": lang, "en": en, "xx": xx, "source": TATOEBA_SOURCE}


def build_corpus(config: CorpusConfig) -> Counter[tuple[str, str]]:
    """Write ``config.out`` (gzipped JSON lines, reproducible bytes) and return the pairs per (lang, source)."""
    from sacrebleu.utils import SACREBLEU_DIR

    cache = Path(config.cache or SACREBLEU_DIR)
    flores = flores_sentences(config.flores, config.languages) if config.flores else {}
    counts: Counter[tuple[str, str]] = Counter()
    config.out.parent.mkdir(parents=True, exist_ok=True)
    with open(config.out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
        for row in clean(raw_rows(config, cache), flores, config.max_chars):
            out.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            counts[row["lang"], row["source"]] += 1
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the pairs file to write (.jsonl.gz)")
    p.add_argument("--languages", default=",".join(LANGUAGES), help="comma-separated, of " + ",".join(LANGUAGES))
    p.add_argument("--sources", default=",".join(SOURCES), help="comma-separated source names (default: all)")
    p.add_argument("--flores", type=Path, help="FLORES folder (<split>/<lang>.txt) whose sentences are removed")
    p.add_argument("--cache", type=Path, help="download folder (default: sacrebleu's, $SACREBLEU or ~/.sacrebleu)")
    p.add_argument("--max-chars", type=int, default=399)
    args = p.parse_args(argv)
    try:
        config = CorpusConfig(**vars(args))
    except ValidationError as e:
        p.error(describe_validation(e, where="config"))
    counts = build_corpus(config)
    for (lang, source), n in sorted(counts.items()):
        print(f"{lang}\t{source}\t{n}")
    print(f"total\t{sum(counts.values())}\t{config.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
