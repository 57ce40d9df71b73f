"""DeepL's glossary routes (v2 and v3) and glossaries applied on /v2/translate and LibreTranslate's /translate,
on in-memory engines (tests/service/fake_engine.py: a segment comes back as its words, so a placeholder comes
back too and the expected output is the source with its terms replaced). A second engine mangles
placeholders (``X1`` -> ``X1e``) to take the fallback path; deepl-python runs against a loopback gateway of
the fake engines. Bad input: malformed entries, duplicates, too many entries, unknown ids, another pair."""

from __future__ import annotations

import re

import deepl
import pytest
from deepl.api_data import MultilingualGlossaryDictionaryEntries
from fastapi.testclient import TestClient

from moe_specialists.service.app import create_app
from tests.service.conftest import KEY, ServerThread, free_port, gateway_settings, metric, wait_ready
from tests.service.fake_engine import FakeEngine, fake_engines

OTHER = "other-key"
DEEPL = {"Authorization": f"DeepL-Auth-Key {KEY}"}
ENTRIES = "server\tServer\ndata centre\tRechenzentrum"


def settings_for(registry_dir, state_dir, **update):
    base = gateway_settings(registry_dir)
    return base.model_copy(update={"state_dir": state_dir, "api_keys": [KEY, OTHER], "max_glossary_entries": 5,
                                   **update})


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def client(registry_dir, state_dir):
    with TestClient(create_app(settings_for(registry_dir, state_dir), engine_factory=fake_engines())) as c:
        wait_ready(c)
        yield c


def create(client, headers=DEEPL, **body):
    fields = {"name": "terms", "source_lang": "EN", "target_lang": "DE", "entries": ENTRIES,
              "entries_format": "tsv"} | body
    return client.post("/v2/glossaries", json=fields, headers=headers)


def translate(client, glossary_id, text="The server is in the data centre.", headers=DEEPL, **body):
    fields = {"text": [text], "source_lang": "EN", "target_lang": "DE", "glossary_id": glossary_id} | body
    return client.post("/v2/translate", json=fields, headers=headers)


def test_v2_create_get_entries_list_delete(client):
    r = create(client)
    assert r.status_code == 201, r.text
    info = r.json()
    gid = info["glossary_id"]
    assert info == {"glossary_id": gid, "name": "terms", "ready": True, "source_lang": "en", "target_lang": "de",
                    "creation_time": info["creation_time"], "entry_count": 2}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", info["creation_time"])
    assert client.get(f"/v2/glossaries/{gid}", headers=DEEPL).json() == info
    assert info in client.get("/v2/glossaries", headers=DEEPL).json()["glossaries"]
    r = client.get(f"/v2/glossaries/{gid}/entries", headers=DEEPL)
    assert r.headers["content-type"].startswith("text/tab-separated-values") and r.text == ENTRIES
    assert client.delete(f"/v2/glossaries/{gid}", headers=DEEPL).status_code == 204
    r = client.get(f"/v2/glossaries/{gid}", headers=DEEPL)
    assert r.status_code == 404 and "Glossary not found" in r.json()["message"]


def test_csv_entries(client):
    r = create(client, entries='"server","Server"\ndata centre,Rechenzentrum,en,de\n', entries_format="csv")
    assert r.status_code == 201 and r.json()["entry_count"] == 2, r.text
    gid = r.json()["glossary_id"]
    assert client.get(f"/v2/glossaries/{gid}/entries", headers=DEEPL).text == ENTRIES


def test_translate_with_glossary_deepl_and_libretranslate(client):
    gid = create(client).json()["glossary_id"]
    before = metric(client, "moe_gateway_glossary_terms_total", how="placeholder")
    r = translate(client, gid, text="The server is in the data centre. Servers are not.")
    assert r.status_code == 200, r.text
    assert r.json()["translations"][0]["text"] == "The Server is in the Rechenzentrum. Servers are not."
    assert metric(client, "moe_gateway_glossary_terms_total", how="placeholder") == before + 2
    r = translate(client, gid, text="<p>The <b>server</b> room</p>", tag_handling="html")
    assert r.status_code == 200 and r.json()["translations"][0]["text"] == "<p>The <b>Server</b> room</p>", r.text
    r = client.post("/translate", json={"q": "the server", "source": "en", "target": "de", "api_key": KEY,
                                        "glossary_id": gid})
    assert r.status_code == 200 and r.json()["translatedText"] == "the Server", r.text
    # without a glossary the fake echoes the text as it is
    assert translate(client, None).json()["translations"][0]["text"] == "The server is in the data centre."


def test_glossaries_belong_to_their_key(client):
    gid = create(client).json()["glossary_id"]
    other = {"Authorization": f"DeepL-Auth-Key {OTHER}"}
    assert client.get(f"/v2/glossaries/{gid}", headers=other).status_code == 404
    assert gid not in [g["glossary_id"] for g in client.get("/v2/glossaries", headers=other).json()["glossaries"]]
    assert translate(client, gid, headers=other).status_code == 404
    assert client.delete(f"/v2/glossaries/{gid}", headers=other).status_code == 404
    assert client.get("/v2/glossaries", headers={"Authorization": "DeepL-Auth-Key wrong"}).status_code == 403


@pytest.mark.parametrize(("body", "says"), [
    ({"entries": "server Server"}, "line 1 has 1 fields"),
    ({"entries": "server\tServer\nlaptop\tNotebook\nserver\tRechner"}, "line 3 duplicates source term 'server'"),
    ({"entries": "\n".join(f"t{i}\tu{i}" for i in range(6))}, "more than 5 entries"),
    ({"entries": '"a,b', "entries_format": "csv"}, "not valid CSV"),
    ({"entries_format": "xlsx"}, "accepted: tsv, csv"),
    ({"target_lang": "XX"}, "unknown target_lang language"),
    ({"target_lang": "EN"}, "source and target are one language"),
    ({"name": ""}, "name"),
    ({"entries": ""}, "entries"),
])
def test_bad_glossaries_get_deepl_400(client, body, says):
    r = create(client, **body)
    assert r.status_code == 400 and says in r.json()["message"], r.text
    assert set(r.json()) == {"message"}


def test_translate_bad_glossary_use(client):
    gid = create(client).json()["glossary_id"]
    r = translate(client, "6f7c8e8e-0000-4000-8000-000000000000")
    assert r.status_code == 404 and "Glossary not found" in r.json()["message"]
    r = translate(client, "not-an-id")
    assert r.status_code == 404
    r = translate(client, gid, text="Der Server.", source_lang="DE", target_lang="EN-GB")
    assert r.status_code == 400 and "no dictionary for de->en (it has en->de)" in r.json()["message"], r.text
    r = translate(client, gid, source_lang=None)
    assert r.status_code == 400 and "source_lang is required" in r.json()["message"]
    r = client.post("/translate", json={"q": "the server", "source": "auto", "target": "de", "api_key": KEY,
                                        "glossary_id": gid})
    assert r.status_code == 400 and "explicit source" in r.json()["error"]


def test_v3_multilingual(client):
    body = {"name": "both ways", "dictionaries": [
        {"source_lang": "EN", "target_lang": "DE", "entries": "server\tServer", "entries_format": "tsv"},
        {"source_lang": "de", "target_lang": "en", "entries": "Rechner,computer", "entries_format": "csv"}]}
    r = client.post("/v3/glossaries", json=body, headers=DEEPL)
    assert r.status_code == 201, r.text
    info = r.json()
    gid = info["glossary_id"]
    assert info["dictionaries"] == [{"source_lang": "en", "target_lang": "de", "entry_count": 1},
                                    {"source_lang": "de", "target_lang": "en", "entry_count": 1}]
    assert client.get(f"/v3/glossaries/{gid}", headers=DEEPL).json() == info
    assert info in client.get("/v3/glossaries", headers=DEEPL).json()["glossaries"]
    assert gid not in [g["glossary_id"] for g in client.get("/v2/glossaries", headers=DEEPL).json()["glossaries"]]
    assert client.get(f"/v2/glossaries/{gid}", headers=DEEPL).status_code == 400  # two dictionaries
    r = client.get(f"/v3/glossaries/{gid}/entries?source_lang=DE&target_lang=EN", headers=DEEPL)
    assert r.json() == {"dictionaries": [{"source_lang": "de", "target_lang": "en", "entries": "Rechner\tcomputer",
                                          "entries_format": "tsv"}]}
    r = translate(client, gid, text="Der Rechner.", source_lang="DE", target_lang="EN-US")
    assert r.status_code == 200 and r.json()["translations"][0]["text"] == "Der computer.", r.text
    assert translate(client, gid, text="A server.").json()["translations"][0]["text"] == "A Server."
    r = client.delete(f"/v3/glossaries/{gid}/dictionaries?source_lang=de&target_lang=en", headers=DEEPL)
    assert r.status_code == 204
    assert translate(client, gid, text="Der Rechner.", source_lang="DE", target_lang="EN-US").status_code == 400
    assert client.get(f"/v3/glossaries/{gid}/entries?source_lang=de&target_lang=en",
                      headers=DEEPL).status_code == 404
    assert client.delete(f"/v3/glossaries/{gid}", headers=DEEPL).status_code == 204
    assert client.get(f"/v3/glossaries/{gid}", headers=DEEPL).status_code == 404
    r = client.post("/v3/glossaries", json={"name": "x", "dictionaries": "no"}, headers=DEEPL)
    assert r.status_code == 400 and "dictionaries" in r.json()["message"]


def test_language_pairs(client):
    pairs = client.get("/v2/glossary-language-pairs", headers=DEEPL).json()["supported_languages"]
    assert {"source_lang": "en", "target_lang": "de"} in pairs and {"source_lang": "de", "target_lang": "en"} in pairs


def test_glossary_survives_a_restart(registry_dir, tmp_path):
    settings = settings_for(registry_dir, tmp_path)
    with TestClient(create_app(settings, engine_factory=fake_engines())) as c:
        gid = create(c).json()["glossary_id"]
    with TestClient(create_app(settings, engine_factory=fake_engines())) as c:
        wait_ready(c)
        assert [g["glossary_id"] for g in c.get("/v2/glossaries", headers=DEEPL).json()["glossaries"]] == [gid]
        assert translate(c, gid).json()["translations"][0]["text"] == "The Server is in the Rechenzentrum."
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{gid}.json"]


class Mangling(FakeEngine):
    """Echoes a text, but glues a letter to every placeholder (``X1`` -> ``X1e``), as a model inflecting it."""

    async def stream(self, source, target, text, params, incremental=True):
        async for g in super().stream(source, target, re.sub(r"\b(X\d+)\b", r"\1e", text), params, incremental):
            yield g


def test_mangled_placeholders_fall_back_to_a_plain_translation(registry_dir, tmp_path):
    def build(spec, settings, metrics, memory_share):
        return Mangling(spec, settings, metrics, 0.0)

    with TestClient(create_app(settings_for(registry_dir, tmp_path), engine_factory=build)) as c:
        wait_ready(c)
        gid = create(c).json()["glossary_id"]
        r = translate(c, gid, text="The server is in the data centre.")
        # translated again without placeholders: the echo copies the source terms; "server" is "Server" in
        # another case (the model's, respelled), "data centre" is replaced
        assert r.json()["translations"][0]["text"] == "The Server is in the Rechenzentrum.", r.text
        assert metric(c, "moe_gateway_glossary_terms_total", how="model") == 1
        assert metric(c, "moe_gateway_glossary_terms_total", how="replaced") == 1
        assert metric(c, "moe_gateway_glossary_terms_total", how="placeholder") == 0


def test_deepl_python_glossary_round_trip_on_fake_engines(registry_dir, tmp_path):
    """deepl-python's own calls (create, translate with it, list, entries, delete; v3 create and entries)."""
    app = create_app(settings_for(registry_dir, tmp_path), engine_factory=fake_engines())
    port = free_port()
    with ServerThread(app, port):
        client = deepl.DeepLClient(KEY, server_url=f"http://127.0.0.1:{port}")
        g = client.create_glossary("terms", "EN", "DE", {"server": "Server", "data centre": "Rechenzentrum"})
        assert (g.name, g.source_lang, g.target_lang, g.entry_count, g.ready) == ("terms", "EN", "DE", 2, True)
        out = client.translate_text("The server is in the data centre.", source_lang="EN", target_lang="DE",
                                    glossary=g)
        assert out.text == "The Server is in the Rechenzentrum."
        assert [x.glossary_id for x in client.list_glossaries()] == [g.glossary_id]
        assert client.get_glossary_entries(g) == {"server": "Server", "data centre": "Rechenzentrum"}
        client.delete_glossary(g)
        with pytest.raises(deepl.GlossaryNotFoundException):
            client.get_glossary(g.glossary_id)
        m = client.create_multilingual_glossary("multi", [
            MultilingualGlossaryDictionaryEntries("EN", "DE", {"server": "Server"})])
        assert [(d.source_lang, d.target_lang, d.entry_count) for d in m.dictionaries] == [("EN", "DE", 1)]
        (d,) = client.get_multilingual_glossary_entries(m, "EN", "DE").dictionaries
        assert d.entries == "server\tServer"
        assert client.update_multilingual_glossary_name(m, "renamed").name == "renamed"
        up = client.update_multilingual_glossary_dictionary(
            m, MultilingualGlossaryDictionaryEntries("EN", "DE", {"server": "Rechner", "laptop": "Notebook"}))
        assert [(d.source_lang, d.entry_count) for d in up.dictionaries] == [("EN", 2)]
        out = client.translate_text("The server.", source_lang="EN", target_lang="DE", glossary=m.glossary_id)
        assert out.text == "The Rechner."  # the updated entry, not the cached one
        rep = client.replace_multilingual_glossary_dictionary(
            m, MultilingualGlossaryDictionaryEntries("DE", "EN", {"Rechner": "computer"}))
        assert (rep.source_lang, rep.target_lang, rep.entry_count) == ("DE", "EN", 1)
        pairs = [(d.source_lang, d.target_lang) for d in client.get_multilingual_glossary(m.glossary_id).dictionaries]
        assert pairs == [("EN", "DE"), ("DE", "EN")]
        client.delete_multilingual_glossary(m)
        assert client.list_multilingual_glossaries() == []
