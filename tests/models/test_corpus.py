"""The corpus rebuild, offline: made-up source files in the layout the downloads have, only the network faked.

Every sentence here was written for this test. sacrebleu's ``download_file`` (WMT, Multi30k) and
``urllib.request.urlopen`` (Tatoeba) are the only fakes: sacrebleu's own code extracts nothing but parses the
SGML/XML/plain files the fake "downloads", and writes its cache as it would.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import pytest
import sacrebleu.utils
from pydantic import ValidationError
from sacrebleu.dataset import DATASETS
from sacrebleu.dataset import base as sacrebleu_base

from moe_specialists.models.tiny_translator import corpus
from moe_specialists.models.tiny_translator.corpus import (
    CorpusConfig,
    build_corpus,
    clean,
    main,
    normalise,
    pair_lines,
    parse_tatoeba,
    read_lines,
)

LONG = "word " * 90  # 450 characters: over max_chars


def sgm(*segments: str) -> str:
    """A WMT fake-SGML file (the pre-2021 format) with one document."""
    segs = "".join(f'<seg id="{i}">{s}</seg>\n' for i, s in enumerate(segments, 1))
    return f'<refset setid="t" srclang="any">\n<doc sysid="ref" docid="d1" genre="news" origlang="xx">\n{segs}</doc>\n'


def wmt_xml(src_lang: str, ref_lang: str, src: list[str], refs: dict[str, list[str]]) -> str:
    """A WMT21 XML file: one document, a reference per translator."""
    def segs(lines: list[str]) -> str:
        return "".join(f'<seg id="{i}">{s}</seg>' for i, s in enumerate(lines, 1))
    ref_docs = "".join(f'<ref lang="{ref_lang}" translator="{t}"><p>{segs(lines)}</p></ref>'
                       for t, lines in refs.items())
    return (f'<dataset id="newstest2021"><collection id="general"><doc id="d1" origlang="{src_lang}">'
            f'<src lang="{src_lang}"><p>{segs(src)}</p></src>{ref_docs}</doc></collection></dataset>')


def files_of(name: str, pairs: dict[str, list[str]]) -> dict[str, str]:
    """relative path -> content, for the files sacrebleu's ``name`` lists for each language pair."""
    return {path: text for lp, texts in pairs.items() for path, text in zip(DATASETS[name].langpairs[lp], texts,
                                                                            strict=True)}


WMT14 = files_of("wmt14/full", {
    "de-en": [sgm("Der Hund  schläft.", "Ein roter Ball."), sgm("The dog sleeps.", " A red ball. ")],
    "en-de": [sgm("The dog sleeps.", "Good morning."), sgm("Der Hund schläft.", "Guten Morgen.")],
})
WMT20 = {
    **files_of("wmt20/tworefs", {
        "de-en": [sgm("Es regnet."), sgm("It is raining."), sgm("It rains.")],
        "en-de": [sgm(LONG, "See you soon."), sgm("Kurz.", "Bis bald."), sgm("Kurz.", "Bis gleich.")],
    }),
    **files_of("wmt20", {"ja-en": [sgm("雨です。"), sgm("It is rain.")],
                         "en-ja": [sgm("Thank you."), sgm("ありがとう。")]}),
}
WMT21 = {
    "test/newstest2021.ja-en.xml": wmt_xml("ja", "en", ["おはよう。", "フローレス一。"],
                                           {"A": ["Good morning.", "Flores one."], "B": ["Morning!", "Flores 1."]}),
    "test/newstest2021.en-ja.xml": wmt_xml("en", "ja", ["Good night."], {"A": ["おやすみ。"]}),
}
WMT16_DEV = {  # newssyscomb2009: multi-way parallel, -src and -ref files per language
    "dev/newssyscomb2009-src.de.sgm": sgm("Die Sitzung beginnt.", "Flores Zeile eins."),
    "dev/newssyscomb2009-ref.en.sgm": sgm("The meeting begins.", "Some English text."),
    "dev/newssyscomb2009-src.en.sgm": sgm("The meeting begins.", "Flores line two in English."),
    "dev/newssyscomb2009-ref.de.sgm": sgm("Die Sitzung beginnt.", "Irgendein Text."),
}
MSCOCO = {"en": "A cat on a sofa.\nTwo dogs play.\n", "de": "Eine Katze auf einem Sofa.\nZwei Hunde spielen.\n",
          "fr": "Un chat sur un canapé.\nDeux chiens jouent.\n"}
TARBALLS = {DATASETS["wmt14/full"].data[0]: WMT14, DATASETS["wmt20"].data[0]: WMT20,
            DATASETS["wmt21"].data[0]: WMT21, DATASETS["wmt16/dev"].data[0]: WMT16_DEV}
GZIPPED = {f"{corpus.MULTI30K_RAW}test_2017_mscoco.{lang}.gz": text for lang, text in MSCOCO.items()}
TATOEBA = {
    "deu-eng": "deu\teng\tIch bin hier.\tI am here.\ndeu\teng\tIch bin hier.\tI'm here.\n"
               "deu\teng\tDer Hund schläft.\tThe dog sleeps.\n",
    "eng-jpn": "eng\tjpn\tI am here.\t私はここにいます。\neng\tjpn_Hira\tYes.\tはい。\n",
}
FLORES = {"en": ("Flores line one in English.", "Flores line two in English."),
          "de": ("Flores Zeile eins.", "Flores Zeile zwei."), "ja": ("フローレス一。", "フローレス二。")}
SOURCES = ["multi30k_test_2017_mscoco", "newssyscomb2009", "newstest2014", "newstest2020", "newstestB2020",
           "newstest2021", "tatoeba-test-v2021-08-07"]

EXPECTED = [  # (lang, en, xx, source), by hand: language by language, sources in corpus.SOURCE_SETS order
    ("de", "A cat on a sofa.", "Eine Katze auf einem Sofa.", "multi30k_test_2017_mscoco"),
    ("de", "Two dogs play.", "Zwei Hunde spielen.", "multi30k_test_2017_mscoco"),
    ("de", "The meeting begins.", "Die Sitzung beginnt.", "newssyscomb2009"),  # de-en; en-de repeats it
    # (its second lines: FLORES de on the de-en side, FLORES en on the en-de side)
    ("de", "The dog sleeps.", "Der Hund schläft.", "newstest2014"),  # X-en first, whitespace collapsed
    ("de", "A red ball.", "Ein roter Ball.", "newstest2014"),
    ("de", "Good morning.", "Guten Morgen.", "newstest2014"),  # en-X: English is the source side
    ("de", "It is raining.", "Es regnet.", "newstest2020"),
    ("de", "See you soon.", "Bis bald.", "newstest2020"),  # the 450-character line dropped
    ("de", "It rains.", "Es regnet.", "newstestB2020"),  # the second English reference of de-en
    ("de", "See you soon.", "Bis gleich.", "newstestB2020"),  # the second German reference of en-de
    ("de", "I am here.", "Ich bin hier.", "tatoeba-test-v2021-08-07"),  # English in the 4th column
    ("de", "I'm here.", "Ich bin hier.", "tatoeba-test-v2021-08-07"),  # ("The dog sleeps." seen in newstest2014)
    ("ja", "It is rain.", "雨です。", "newstest2020"),
    ("ja", "Thank you.", "ありがとう。", "newstest2020"),
    ("ja", "Good morning.", "おはよう。", "newstest2021"),  # reference A, not B; line 2 is FLORES ja
    ("ja", "Good night.", "おやすみ。", "newstest2021"),
    ("ja", "I am here.", "私はここにいます。", "tatoeba-test-v2021-08-07"),
    ("ja", "Yes.", "はい。", "tatoeba-test-v2021-08-07"),
]


class FakeNetwork:
    """sacrebleu's ``download_file`` and urllib's ``urlopen`` over the made-up files; ``offline`` refuses any
    download (a file already in the cache is not downloaded again, as with the real ones)."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.offline = False

    def _get(self, url: str) -> None:
        if self.offline:
            raise AssertionError(f"downloaded {url} although it was in the cache")
        self.urls.append(url)

    def download_file(self, url: str, dest: str, extract_to: str | None = None, expected_md5: str | None = None):
        if os.path.exists(dest) and os.path.getsize(dest) > 0:
            return
        self._get(url)
        if url in GZIPPED:
            Path(dest).write_bytes(gzip.compress(GZIPPED[url].encode()))
            return
        Path(dest).write_bytes(b"a tarball")
        for relative, text in TARBALLS[url].items():
            (Path(extract_to) / relative).parent.mkdir(parents=True, exist_ok=True)
            (Path(extract_to) / relative).write_text(text, encoding="utf-8")

    def urlopen(self, url: str, timeout: float | None = None) -> io.BytesIO:
        self._get(url)
        pair = url.rsplit(".", 3)[-3]  # ...tatoeba-test-v2021-08-07.<pair>.txt.gz
        return io.BytesIO(gzip.compress(TATOEBA[pair].encode()))


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> FakeNetwork:
    fake = FakeNetwork()
    monkeypatch.setattr(sacrebleu_base, "download_file", fake.download_file)
    monkeypatch.setattr(corpus.urllib.request, "urlopen", fake.urlopen)
    return fake


@pytest.fixture
def flores(tmp_path: Path) -> Path:
    for lang, (dev, devtest) in FLORES.items():
        for split, line in (("dev", dev), ("devtest", devtest)):
            (tmp_path / "flores" / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "flores" / split / f"{lang}.txt").write_text(line + "\n", encoding="utf-8")
    return tmp_path / "flores"


def read_rows(path: Path) -> list[tuple[str, str, str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [(r["lang"], r["en"], r["xx"], r["source"]) for r in map(json.loads, f)]


def test_build_corpus_by_hand(tmp_path: Path, network: FakeNetwork, flores: Path) -> None:
    config = CorpusConfig(out=tmp_path / "pairs.jsonl.gz", languages="de,ja", sources=SOURCES, flores=flores,
                          cache=tmp_path / "cache")
    counts = build_corpus(config)
    assert read_rows(config.out) == EXPECTED
    assert counts == {("de", "multi30k_test_2017_mscoco"): 2, ("de", "newssyscomb2009"): 1, ("de", "newstest2014"): 3,
                      ("de", "newstest2020"): 2, ("de", "newstestB2020"): 2, ("de", "tatoeba-test-v2021-08-07"): 2,
                      ("ja", "newstest2020"): 2, ("ja", "newstest2021"): 2, ("ja", "tatoeba-test-v2021-08-07"): 2}
    # where sacrebleu keeps them, and the pinned Tatoeba release files
    assert (tmp_path / "cache/wmt14/full/wmt14_full.de-en.src").is_file()
    assert (tmp_path / "cache/multi30k/2017/raw/multi30k_2017.test_2017_mscoco.de.gz").is_file()
    assert [u.rsplit("/", 1)[-1] for u in network.urls if "Tatoeba" in u] == [
        "tatoeba-test-v2021-08-07.deu-eng.txt.gz", "tatoeba-test-v2021-08-07.eng-jpn.txt.gz"]

    # a second build reads the cache only, and writes the same bytes
    first = config.out.read_bytes()
    network.offline = True
    build_corpus(config)
    assert config.out.read_bytes() == first


def test_without_flores_its_sentences_stay(tmp_path: Path, network: FakeNetwork) -> None:
    config = CorpusConfig(out=tmp_path / "p.jsonl.gz", languages=["ja"], sources=["newstest2021"],
                          cache=tmp_path / "cache")
    build_corpus(config)
    assert read_rows(config.out) == [("ja", "Good morning.", "おはよう。", "newstest2021"),
                                     ("ja", "Flores one.", "フローレス一。", "newstest2021"),
                                     ("ja", "Good night.", "おやすみ。", "newstest2021")]


def test_cli_prints_counts_and_uses_sacrebleus_cache(tmp_path: Path, network: FakeNetwork,
                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sacrebleu.utils, "SACREBLEU_DIR", str(tmp_path / "sacrebleu"))
    main(["--out", str(tmp_path / "p.jsonl.gz"), "--languages", "de", "--sources", "newstest2014"])
    assert capsys.readouterr().out == "de\tnewstest2014\t3\n"
    assert (tmp_path / "sacrebleu/wmt14/full/raw").is_dir()


def test_pure_helpers() -> None:
    assert normalise("  two\t spaces \n") == "two spaces"
    assert pair_lines(["s1", "s2"], ["r1", "r2"], source_is_english=True) == [("s1", "r1"), ("s2", "r2")]
    assert pair_lines(["s1"], ["r1"], source_is_english=False) == [("r1", "s1")]
    with pytest.raises(ValueError, match="2 source lines but 1 reference lines"):
        pair_lines(["a", "b"], ["c"], source_is_english=True)
    assert parse_tatoeba(["eng\tfra\tHello.\tBonjour.", "fra\teng\tMerci.\tThanks.", "deu\tfra\tJa.\tOui.",
                          "broken line"]) == [("Hello.", "Bonjour."), ("Thanks.", "Merci.")]


def test_read_lines_splits_at_newlines_only(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\u2028still one\ntwo\n", encoding="utf-8")
    assert read_lines(tmp_path / "a.txt") == ["one\u2028still one", "two"]
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"x\ny"))
    assert read_lines(tmp_path / "b.gz") == ["x", "y"]
    (tmp_path / "c.txt").write_text("")
    assert read_lines(tmp_path / "c.txt") == []


def test_clean_drops_flores_empty_long_and_repeated_pairs() -> None:
    def row(en: str, xx: str, lang: str = "de") -> dict[str, str]:
        return {"lang": lang, "en": en, "xx": xx, "source": "s"}

    rows = [row("Keep  me.", "Behalte mich."), row("Keep me.", "Behalte mich."), row("Keep me.", "Behalte mich.", "fr"),
            row("In FLORES.", "Neu."), row("New.", "In FLORES."), row("In FLORES.", "Nouveau.", "fr"),
            row("", "Leer."), row("x" * 14, "kurz")]
    flores = {"en": {"In FLORES."}, "de": {"In FLORES."}, "fr": set()}
    assert [(r["lang"], r["en"]) for r in clean(rows, flores, max_chars=13)] == [("de", "Keep me."), ("fr", "Keep me.")]


def test_config_errors_say_what_is_accepted(tmp_path: Path, flores: Path) -> None:
    with pytest.raises(ValidationError, match=r"unknown languages \['xx'\]; accepted: de, cs, fr, ru, es, zh, ja"):
        CorpusConfig(out=tmp_path / "p", languages="de,xx")
    with pytest.raises(ValidationError, match=r"unknown sources \['newstest2019'\]; accepted: multi30k_test_2016"):
        CorpusConfig(out=tmp_path / "p", sources="newstest2019")
    with pytest.raises(ValidationError, match="FLORES folder .*nowhere not found; give a folder with dev/<lang>.txt"):
        CorpusConfig(out=tmp_path / "p", flores=tmp_path / "nowhere")
    with pytest.raises(ValidationError, match="lacks dev/fr.txt, devtest/fr.txt; it needs <split>/<lang>.txt"):
        CorpusConfig(out=tmp_path / "p", languages="de,fr", flores=flores)
    with pytest.raises(ValidationError, match="extra"):
        CorpusConfig(out=tmp_path / "p", langs="de")


def test_cli_error_is_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "p.jsonl.gz"), "--languages", "de,klingon"])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("error: languages: unknown languages ['klingon']; accepted: de, cs, fr, ru, es, zh, ja")
