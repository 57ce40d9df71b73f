"""The real client libraries against a real gateway on loopback (uvicorn, one in-process vLLM engine of a
pruned tiny random model, multilingual among en, de, fr, es, zh, pt): libretranslatepy and deepl as their users
call them, LibreTranslate's html / files / CORS / alternatives, DeepL's errors and quotas, and the web page in
Debian's chromium driven by playwright.

The model is random, so its texts are garbage: every translation is checked against what the native
/v1/translate answers for the same text and direction (greedy decoding is deterministic), and markup against
the input's tags."""

from __future__ import annotations

import json
import re
import urllib.error
from pathlib import Path

import deepl
import httpx
import pytest
from libretranslatepy import LibreTranslateAPI

from moe_specialists.service.cache import TranslationCache
from moe_specialists.service.quotas import Quotas
from tests.service.conftest import READY_TIMEOUT_S, metric
from tests.service.servers import SPECIALIST, gateway

pytestmark = [pytest.mark.timeout(READY_TIMEOUT_S + 300), pytest.mark.slow]
# (slow: make test-fast skips it: the real client libraries against running gateways)
KEY = "client-key"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with gateway(tiny_model_dir, tmp_path_factory.mktemp("clients")) as (app, url):
        yield app, url


@pytest.fixture(scope="module")
def url(server):
    return server[1]


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


@pytest.fixture
def keys_required(server):
    """The gateway asks for API keys during the test (its settings are read per request)."""
    app, _ = server
    app.state.settings.api_keys = [KEY]
    try:
        yield KEY
    finally:
        app.state.settings.api_keys = []


def native(client: httpx.Client, text: str, source: str, target: str) -> str:
    r = client.post("/v1/translate", json={"text": text, "source": source, "target": target},
                    headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return r.json()["translations"][0]["text"]


def tags(html: str) -> list[str]:
    return re.findall(r"<[^>]+>", html)


# ---- libretranslatepy ----

def test_libretranslatepy_translate_detect_languages(url, client):
    lt = LibreTranslateAPI(url)
    assert lt.translate("Hello world", "en", "de") == native(client, "Hello world", "en", "de")
    # the spellings LibreTranslate clients send: upper case, BCP-47, its own aliases
    for source, target, same_as in [("EN", "DE", "de"), ("en-US", "pt-BR", "pt"), ("en", "zh-Hans", "zh"),
                                    ("en", "pb", "pt"), ("eng", "deu_Latn", "de")]:
        assert lt.translate("Hello world", source, target) == native(client, "Hello world", "en", same_as)
    assert lt.translate("Hallo Welt", "de", "de") == "Hallo Welt"  # source == target: the text itself
    (found,) = lt.detect("Das ist ein schöner Tag, und die Kinder spielen im Garten.")
    assert found["language"] == "de" and 90 <= found["confidence"] <= 100
    languages = {lang["code"]: lang for lang in lt.languages()}
    assert set(languages) == {"en", "de", "fr", "es", "zh-Hans", "pt"}
    assert languages["en"]["name"] == "English" and "zh-Hans" in languages["en"]["targets"]


def test_libretranslatepy_with_api_key(url, client, keys_required):
    lt = LibreTranslateAPI(url, api_key=keys_required)
    assert lt.translate("Good morning", "en", "fr") == native(client, "Good morning", "en", "fr")
    assert lt.detect("Bonjour tout le monde, comment allez-vous ?")[0]["language"] == "fr"
    assert {lang["code"] for lang in lt.languages()} >= {"en", "fr"}
    for bad in (LibreTranslateAPI(url), LibreTranslateAPI(url, api_key="wrong")):
        with pytest.raises(urllib.error.HTTPError) as e:
            bad.translate("Good morning", "en", "fr")
        assert e.value.code in (401, 403) and json.loads(e.value.read())["error"]


ARTICLE = "\n\n".join([
    "The town library opens at nine. Children come after school to read and to play chess.",
    "On Saturdays the market fills the square. Farmers sell apples, cheese and fresh bread.",
    "The river is calm in summer. People swim near the bridge, and boats carry tourists to the island.",
    "In winter the hills are white. The school closes when the snow is too deep for the buses.",
    "A new bakery opened last month. Its owner gets up at four to bake before the first train.",
    "Everyone agrees that the town is quiet. Nobody wants it to change too quickly.",
])


def paragraphs(text: str) -> list[str]:
    return text.split("\n\n")


@pytest.fixture
def cache_on(server):
    """The gateway with a translation cache during the test (its size as ``translation_cache_size="1MiB"``)."""
    app, _ = server
    translator = app.state.translator
    translator.cache = TranslationCache(1024 ** 2, app.state.metrics)
    try:
        yield translator.cache
    finally:
        translator.cache = None


def test_an_article_through_both_clients_keeps_its_paragraphs_and_hits_the_cache(url, client, cache_on):
    """Six paragraphs, twelve sentences: each client gets six non-empty paragraphs back, the same text as the
    native route; the second and third asks are answered from the cache (hits counted in /metrics)."""
    def counts() -> tuple[float, float]:
        return tuple(metric(client, f"moe_gateway_translation_cache_{kind}_total", specialist=SPECIALIST)
                     for kind in ("hits", "misses"))

    hits, misses = counts()
    lt = LibreTranslateAPI(url).translate(ARTICLE, "en", "de")
    assert len(paragraphs(lt)) == 6 and all(p.strip() for p in paragraphs(lt)), lt
    assert counts() == (hits, misses + 12)
    dl = deepl.Translator("any-key", server_url=url).translate_text(ARTICLE, source_lang="EN", target_lang="DE")
    assert dl.text == lt == native(client, ARTICLE, "en", "de")
    assert counts() == (hits + 24, misses + 12) and len(cache_on) == 12


# ---- the rest of LibreTranslate's API ----

def test_libretranslate_auto_list_and_alternatives(client):
    r = client.post("/translate", json={"q": ["Hello my friend, how are you today?", "Guten Morgen, wie geht es dir?"],
                                        "source": "auto", "target": "fr", "alternatives": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["language"] for d in body["detectedLanguage"]] == ["en", "de"]
    assert body["translatedText"][1] == native(client, "Guten Morgen, wie geht es dir?", "de", "fr")
    assert body["alternatives"] == [[], []]  # the engines give one answer per text
    r = client.post("/translate", data={"q": "Hello", "source": "en", "target": "de"})
    assert set(r.json()) == {"translatedText"}


def test_libretranslate_html_keeps_markup(client):
    doc = ('<h1>Welcome</h1><p>The <b>cat</b> sleeps on the <a href="/sofa">sofa</a>.</p>'
           '<p translate="no">Brand name</p><script>var x = "do not touch";</script><p>Run <code>ls</code> now</p>')
    r = client.post("/translate", json={"q": doc, "source": "en", "target": "de", "format": "html"})
    assert r.status_code == 200, r.text
    out = r.json()["translatedText"]
    assert tags(out) == tags(doc)
    assert '<p translate="no">Brand name</p>' in out and 'var x = "do not touch";' in out and "<code>ls</code>" in out
    assert native(client, "Welcome", "en", "de") in out  # a block without tags: its text translated as one


def test_translate_file_srt_and_types(client):
    srt = "1\n00:00:01,000 --> 00:00:02,000\nHello there\n\n2\n00:00:03,000 --> 00:00:04,000\nGood night\n"
    r = client.post("/translate_file", data={"source": "en", "target": "de"},
                    files={"file": ("movie.srt", srt.encode(), "application/x-subrip")})
    assert r.status_code == 200, r.text
    download = client.get(r.json()["translatedFileUrl"].replace(str(client.base_url), ""))
    assert download.status_code == 200 and 'filename="movie.srt"' in download.headers["content-disposition"]
    lines = download.text.split("\n")
    assert lines[:2] == ["1", "00:00:01,000 --> 00:00:02,000"] and lines[4:6] == ["2", "00:00:03,000 --> 00:00:04,000"]
    assert lines[2] == native(client, "Hello there", "en", "de")
    r = client.post("/translate_file", data={"source": "en", "target": "de"}, files={"file": ("a.pdf", b"%PDF")})
    assert r.status_code == 400 and ".txt, .html, .htm, .srt, .md" in r.json()["error"]


def test_libretranslate_small_routes(client):
    settings = client.get("/frontend/settings").json()
    assert settings["suggestions"] is False and ".srt" in settings["supportedFilesFormat"]
    assert settings["language"]["source"]["code"] == "auto"
    assert client.get("/health").json() == {"status": "ok"}
    assert "/translate" in client.get("/spec").json()["paths"]
    r = client.post("/suggest", data={"q": "a", "s": "b", "source": "en", "target": "de"})
    assert r.status_code == 403 and "disabled" in r.json()["error"]
    r = client.post("/translate", json={"q": "Hello", "source": "en", "target": "klingon"})
    assert r.status_code == 400 and "accepted: de, en, es, fr, pt, zh" in r.json()["error"]


def test_cors_open_on_libretranslate_routes(client):
    origin = {"Origin": "https://some.site"}
    r = client.options("/translate", headers={**origin, "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    r = client.post("/translate", json={"q": "Hello", "source": "en", "target": "de"}, headers=origin)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in client.get("/v1/languages", headers=origin).headers


# ---- deepl ----

def test_deepl_translate_text(url, client):
    translator = deepl.Translator("any-key", server_url=url)
    one = translator.translate_text("Hello world", source_lang="EN", target_lang="DE")
    assert one.text == native(client, "Hello world", "en", "de")
    assert one.detected_source_lang == "EN" and one.billed_characters == len("Hello world")
    many = translator.translate_text(["Hello world", "Good night"], target_lang="PT-BR")  # auto source
    assert [r.text for r in many] == [native(client, t, "en", "pt") for t in ("Hello world", "Good night")]
    assert [r.detected_source_lang for r in many] == ["EN", "EN"]
    auto = translator.translate_text("Bonjour tout le monde, comment allez-vous ?", target_lang="EN-US")
    assert auto.detected_source_lang == "FR"
    html = translator.translate_text("<p>The <b>cat</b> sleeps.</p><p translate='no'>Keep</p>",
                                     source_lang="EN", target_lang="ZH-HANS", tag_handling="html")
    assert tags(html.text) == ["<p>", "<b>", "</b>", "</p>", '<p translate="no">', "</p>"] and "Keep" in html.text


def test_deepl_languages_and_usage(url):
    translator = deepl.Translator("any-key", server_url=url)
    assert {lang.code for lang in translator.get_source_languages()} == {"EN", "DE", "FR", "ES", "ZH", "PT"}
    targets = {lang.code: lang.name for lang in translator.get_target_languages()}
    assert {"EN-US", "EN-GB", "PT-BR", "PT-PT", "DE", "ZH-HANS"} <= set(targets)
    assert targets["EN-GB"] == "English (United Kingdom)"
    before = translator.get_usage().character.count
    translator.translate_text("Twelve chars", target_lang="DE")
    usage = translator.get_usage()
    assert usage.character.count == before + 12 and usage.character.valid


def test_deepl_translate_document_txt_and_html(url, client, tmp_path):
    """translate_document_from_filepath (upload, status, download) on the real engine: a .txt comes back line for
    line as the native route translates each line, an .html with its tags."""
    translator = deepl.Translator("any-key", server_url=url)
    lines = ["The library opens at nine.", "", "The market is on Saturday. Farmers sell bread."]
    (tmp_path / "notes.txt").write_text("\n".join(lines) + "\n")
    status = translator.translate_document_from_filepath(tmp_path / "notes.txt", tmp_path / "notes.de.txt",
                                                         source_lang="EN", target_lang="DE")
    assert status.done and status.billed_characters == len("\n".join(lines)) + 1
    expected = [native(client, line, "en", "de") if line else "" for line in lines]
    assert (tmp_path / "notes.de.txt").read_text() == "\n".join(expected) + "\n"
    (tmp_path / "page.html").write_text("<html><body><h1>Welcome</h1><p>The <b>cat</b> sleeps.</p></body></html>")
    translator.translate_document_from_filepath(tmp_path / "page.html", tmp_path / "page.de.html", target_lang="DE")
    out = (tmp_path / "page.de.html").read_text()
    assert tags(out) == ["<html>", "<body>", "<h1>", "</h1>", "<p>", "<b>", "</b>", "</p>", "</body>", "</html>"]


@pytest.mark.slow
def test_deepl_glossary_round_trip(server, url, client):
    """create_glossary -> translate_text(glossary=...) -> list -> entries -> delete on the real engine: the model
    is random, so its answer shows the enforcement, not the model (the placeholders it drops are made up for)."""
    app, _ = server
    translator = deepl.Translator("any-key", server_url=url)
    entries = {"garden": "Garten", "children": "Kinder"}
    g = translator.create_glossary("terms", "EN", "DE", entries)
    text = "The children are playing in the garden."
    out = translator.translate_text(text, source_lang="EN", target_lang="DE", glossary=g).text
    assert "Garten" in out and "Kinder" in out, out
    assert out != native(client, text, "en", "de")
    assert [x.glossary_id for x in translator.list_glossaries()] == [g.glossary_id]
    assert translator.get_glossary_entries(g) == entries
    translator.delete_glossary(g)
    assert translator.list_glossaries() == []
    with pytest.raises(deepl.DeepLException, match="Glossary not found"):  # a 404 on translate: not the
        translator.translate_text(text, source_lang="EN", target_lang="DE", glossary=g.glossary_id)  # glossary kind
    assert not list((app.state.settings.state_dir / "glossaries").rglob("*.json"))


def test_deepl_errors(server, url, keys_required):
    app, _ = server
    with pytest.raises(deepl.AuthorizationException):
        deepl.Translator("wrong-key", server_url=url).translate_text("Hello", target_lang="DE")
    translator = deepl.Translator(keys_required, server_url=url)
    with pytest.raises(deepl.DeepLException, match="Bad request.*klingon"):
        translator.translate_text("Hello", target_lang="klingon")
    app.state.quotas = Quotas(None, 10, app.state.metrics)  # 10 characters a day
    try:
        translator.translate_text("Hello", target_lang="DE")
        with pytest.raises(deepl.QuotaExceededException):
            translator.translate_text("Hello world", target_lang="DE")
        usage = translator.get_usage().character
        assert (usage.count, usage.limit) == (5, 10)
        r = httpx.post(f"{url}/translate", json={"q": "Hello world", "source": "en", "target": "de",
                                                 "api_key": keys_required})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "per day" in r.json()["error"]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'moe_gateway_quota_rejections_total{key="' in metrics and 'kind="characters"} 2.0' in metrics
    finally:
        app.state.quotas = None


def test_requests_per_minute_quota(server, url):
    app, _ = server
    app.state.quotas = Quotas(2, None, app.state.metrics)
    try:
        for _ in range(2):
            assert httpx.post(f"{url}/detect", data={"q": "Hello there"}).status_code == 200
        r = httpx.post(f"{url}/detect", data={"q": "Hello there"})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60 and "per minute" in r.json()["error"]
        r = httpx.post(f"{url}/v2/translate", json={"text": ["Hi"], "target_lang": "DE"})
        assert r.status_code == 429 and "per minute" in r.json()["message"]
    finally:
        app.state.quotas = None


# ---- the web page, in a real browser ----

def test_web_page_in_chromium(server, client, keys_required, tmp_path):
    """Load the page, pick en -> de, type the key and a text, translate: the translation, specialist, route,
    latency and memory saved appear."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "needs Debian's chromium: apt-get install -y chromium (.ci/run does)"
    _, url = server
    want = native(client, "The children are playing in the garden.", "en", "de")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 560})
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#source option').length > 1")
            assert page.locator("#source option").first.get_attribute("value") == "auto"
            page.select_option("#source", "en")
            page.select_option("#target", "de")
            page.fill("#key", keys_required)
            page.fill("#text", "The children are playing in the garden.")
            page.click("#go")
            page.wait_for_function("document.getElementById('specialist').textContent !== '-'")
            assert page.locator("#error").text_content() == ""
            assert page.locator("#translation").text_content() == want
            assert page.locator("#specialist").text_content() == SPECIALIST
            assert page.locator("#route").text_content() == "multilingual"
            assert re.fullmatch(r"\d+ ms", page.locator("#latency").text_content())
            assert "% of the base model's weights" in page.locator("#saved").text_content()
            page.screenshot(path=str(tmp_path / "web.png"))
        finally:
            browser.close()
