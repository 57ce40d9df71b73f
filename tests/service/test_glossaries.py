"""Glossaries without a gateway: TSV/CSV parsing and DeepL's rules (service/glossaries.py), the store on disk
(atomic, per owner, read back by a new store), and the placeholder substitution (service/terms.py), each
checked against values worked out by hand."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from moe_specialists.service.glossaries import (
    Dictionary,
    GlossaryStore,
    dictionary_for,
    merged,
    new_glossary,
    owner_of,
    parse_entries,
    to_tsv,
    with_dictionary,
)
from moe_specialists.service.quotas import key_label
from moe_specialists.service.terms import append, compile_terms, enforce, ensure, protect, restore
from moe_specialists.service.translation_errors import GlossaryNotFound, InvalidGlossary

# ---- parsing ----


def test_tsv_entries_stripped_blank_lines_skipped():
    text = "server\tServer\n\n  data centre \t Rechenzentrum\r\nlaptop\tNotebook\n"
    assert parse_entries(text, "tsv", "en", "de", 10) == (
        ("server", "Server"), ("data centre", "Rechenzentrum"), ("laptop", "Notebook"))


def test_csv_entries_quoted_fields_and_language_columns():
    text = 'server,Server\n"Hello, world","Hallo, Welt"\n"say ""hi""",sag hallo,en,de\n'
    assert parse_entries(text, "csv", "en", "de", 10) == (
        ("server", "Server"), ("Hello, world", "Hallo, Welt"), ('say "hi"', "sag hallo"))


@pytest.mark.parametrize(("text", "fmt", "why"), [
    ("server Server", "tsv", "line 1 has 1 fields"),
    ("a\tb\nc\td\te", "tsv", "line 2 has 3 fields"),
    ("a,b,c", "csv", "line 1 has 3 fields"),
    ('"a,b', "csv", "not valid CSV"),
    ("a,b,en,fr", "csv", "line 1 is for en->fr"),
    ("a\t ", "tsv", "line 1: empty term"),
    ("a\tb\u2028c", "tsv", "control character"),
    ("a\tb\x07", "tsv", "control character"),
    ("x" * 1025 + "\ty", "tsv", "over 1024 bytes"),
    ("\n \n", "tsv", "no entries"),
    ("a\tb", "xml", "entries_format 'xml'; accepted: tsv, csv"),
])
def test_malformed_entries_refused(text, fmt, why):
    with pytest.raises(InvalidGlossary, match=why):
        parse_entries(text, fmt, "en", "de", 10)


def test_duplicate_source_term_refused_with_its_line():
    with pytest.raises(InvalidGlossary, match="line 3 duplicates source term 'server'"):
        parse_entries("server\tServer\nlaptop\tNotebook\nserver \tRechner", "tsv", "en", "de", 10)
    # another case is another term (DeepL's rule): "Server" and "server" may both be listed
    assert len(parse_entries("server\ta\nServer\tb", "tsv", "en", "de", 10)) == 2


def test_entry_limit_counts_entries():
    five = "\n".join(f"t{i}\tu{i}" for i in range(5))
    assert len(parse_entries(five, "tsv", "en", "de", 5)) == 5
    with pytest.raises(InvalidGlossary, match="more than 4 entries") as e:
        parse_entries(five, "tsv", "en", "de", 4)
    assert e.value.details == {"limit": 4}


def test_new_glossary_rules_and_deepl_timestamp():
    d = Dictionary("en", "de", (("a", "b"),))
    g = new_glossary(" My terms ", [d], now=datetime(2026, 12, 3, 17, 31, 56, 123456, tzinfo=UTC))
    assert g.name == "My terms" and g.creation_time == "2026-12-03T17:31:56.123456Z"
    assert len(g.glossary_id) == 36 and g.dictionary("en", "de") is d and g.dictionary("de", "en") is None
    with pytest.raises(InvalidGlossary, match="two dictionaries for one language pair"):
        new_glossary("x", [d, d])
    with pytest.raises(InvalidGlossary, match="name"):
        new_glossary("  ", [d])
    with pytest.raises(InvalidGlossary, match="has no dictionary for en->fr \\(it has en->de\\)"):
        dictionary_for(g, "en", "fr")


def test_owner_is_the_key_hash_only_when_keys_are_checked():
    assert owner_of([], "whatever") == owner_of([], None) == "anonymous"
    assert owner_of(["k1"], "k1") == key_label("k1") != owner_of(["k1"], "k2")


# ---- storage ----


def test_store_round_trip_per_owner_and_a_new_store_reads_it(tmp_path):
    store = GlossaryStore(tmp_path)
    g = new_glossary("g", [Dictionary("en", "de", (("server", "Server"), ("a\"b", "c")))])
    store.save("anonymous", g)
    path = tmp_path / "anonymous" / f"{g.glossary_id}.json"
    assert json.loads(path.read_text())["dictionaries"][0]["entries"] == [["server", "Server"], ['a"b', "c"]]
    assert [p.name for p in (tmp_path / "anonymous").iterdir()] == [path.name]  # no temporary file left
    again = GlossaryStore(tmp_path)
    assert again.get("anonymous", g.glossary_id) == g and again.list("anonymous") == [g]
    other = key_label("someone")
    assert again.list(other) == []
    with pytest.raises(GlossaryNotFound):
        again.get(other, g.glossary_id)
    again.delete("anonymous", g.glossary_id)
    assert again.list("anonymous") == [] and not path.exists()
    with pytest.raises(GlossaryNotFound):
        again.delete("anonymous", g.glossary_id)


def test_store_refuses_ids_that_are_no_uuid(tmp_path):
    store = GlossaryStore(tmp_path)
    for bad in ("../../etc/passwd", "abc", ""):
        with pytest.raises(GlossaryNotFound):
            store.get("anonymous", bad)


def test_store_terms_cached_and_forgotten_on_delete(tmp_path):
    store = GlossaryStore(tmp_path)
    g = new_glossary("g", [Dictionary("en", "de", (("server", "Server"),))])
    store.save("anonymous", g)
    first = store.terms("anonymous", g.glossary_id, "en", "de")
    assert store.terms("anonymous", g.glossary_id, "en", "de") is first
    with pytest.raises(InvalidGlossary, match="no dictionary for en->fr"):
        store.terms("anonymous", g.glossary_id, "en", "fr")
    store.delete("anonymous", g.glossary_id)
    with pytest.raises(GlossaryNotFound):
        store.terms("anonymous", g.glossary_id, "en", "de")



def test_two_replicas_on_one_state_folder_never_serve_stale_terms(tmp_path):
    """Two gateways sharing a state folder (k8s replicas on one volume): an edit or delete by one is seen by
    the other, whose compiled terms were cached before."""
    a, b = GlossaryStore(tmp_path), GlossaryStore(tmp_path)
    g = new_glossary("g", [Dictionary("en", "de", (("server", "Server"),))])
    a.save("anonymous", g)
    assert b.terms("anonymous", g.glossary_id, "en", "de").target("server") == "Server"
    a.save("anonymous", with_dictionary(g, Dictionary("en", "de", (("server", "Rechner"), ("data", "Daten")))))
    assert b.terms("anonymous", g.glossary_id, "en", "de").target("server") == "Rechner"
    a.delete("anonymous", g.glossary_id)
    with pytest.raises(GlossaryNotFound):
        b.terms("anonymous", g.glossary_id, "en", "de")


# ---- placeholders ----

TERMS = compile_terms((("server", "Server"), ("data centre", "Rechenzentrum"), ("data", "Daten"),
                       ("Apple", "Apfel AG"), ("apple", "Apfel"), ("型号", "Modell")))


def test_protect_whole_words_longest_first_case_aware():
    p = protect("The Server in the data centre sends data to Apple, not the apple; servers differ.", TERMS)
    # "Server" (a lowercase term matches any case), "data centre" before "data", "Apple" cased, "servers" is
    # another word
    assert p.text == "The X1 in the X2 sends X3 to X4, not the X5; servers differ."
    assert p.slots == (("X1", "Server", "Server"), ("X2", "Rechenzentrum", "data centre"), ("X3", "Daten", "data"),
                       ("X4", "Apfel AG", "Apple"), ("X5", "Apfel", "apple"))


def test_protect_picks_a_letter_the_text_does_not_use_and_skips_tags():
    p = protect("X1 and Y2 models: the server", TERMS)
    assert p.text == "X1 and Y2 models: the Z1"
    m = protect('<a title="server">the server</a>', TERMS, markup=True)
    assert m.text == '<a title="server">the X1</a>' and len(m.slots) == 1
    assert protect("这个型号很好", TERMS).text == "这个X1很好"  # no word boundary asked in CJK


def test_restore_needs_every_placeholder_once_and_alone():
    p = protect("the server and the data", TERMS)
    assert restore("der X1 und die X2.", p) == "der Server und die Daten."
    assert restore("der X1 und die X2 X2.", p) is None  # twice
    assert restore("der X1 und die Daten.", p) is None  # dropped
    assert restore("der X1e und die X2.", p) is None  # glued to a word
    assert restore("der X1 und die X2 und X3.", p) is None  # one made up
    assert restore("der Server", protect("nothing here", TERMS)) == "der Server"


def test_ensure_keeps_replaces_or_appends():
    p = protect("the server and the apple", TERMS)
    assert ensure("der server und der Apfel.", p) == ("der Server und der Apfel.", ["model", "model"])
    assert ensure("der server und die apple.", protect("the server and the apple", TERMS)) == (
        "der Server und die Apfel.", ["model", "replaced"])
    assert ensure("der Rechner und die Birne!", p) == ("der Rechner und die Birne (Server) (Apfel)!",
                                                       ["appended", "appended"])
    assert append("Hallo", "Welt") == "Hallo (Welt)" and append("", "Welt") == "Welt"
    assert append('Er sagt "ja."', "Welt") == 'Er sagt "ja (Welt)."'


def test_enforce_restores_and_translates_failures_again():
    protected = [protect("the server", TERMS), protect("the data", TERMS), protect("no terms", TERMS)]
    asked = []

    async def again(indices):
        asked.append(indices)
        return ["die data"]

    out, hows = asyncio.run(enforce(protected, ["der X1", "die X9", "keine"], again))
    assert out == ["der Server", "die Daten", "keine"] and asked == [[1]]
    assert hows == {"placeholder": 1, "replaced": 1}


def test_entries_back_as_tsv():
    assert to_tsv((("a", "b"), ("c d", "e"))) == "a\tb\nc d\te"


def test_v3_updates_merge_entries_and_replace_dictionaries():
    old = Dictionary("en", "de", (("a", "1"), ("b", "2")))
    new = Dictionary("en", "de", (("b", "3"), ("c", "4")))
    assert merged(old, new, 3).entries == (("a", "1"), ("b", "3"), ("c", "4"))
    with pytest.raises(InvalidGlossary, match="more than 2 entries"):
        merged(old, new, 2)
    fr = Dictionary("en", "fr", (("a", "x"),))
    g = new_glossary("g", [old, fr])
    assert with_dictionary(g, new).dictionaries == (new, fr)  # in its place
    de_en = Dictionary("de", "en", (("z", "y"),))
    assert with_dictionary(g, de_en).dictionaries == (old, fr, de_en)
