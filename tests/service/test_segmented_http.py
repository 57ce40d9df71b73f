"""Segmented translation through every API, on in-memory engines (tests/service/fake_engine.py): the fake echoes
a text's words joined by single spaces, at most ``default_max_tokens`` (8) of them, so a text sent as ONE prompt
comes back cut after 8 words and with its layout lost, while a text cut into sentences comes back exactly.
Limits (131072 characters per request, none per text), DeepL's split_sentences and preserve_formatting, markup,
streaming and bad input (markup nested too deep, broken SubRip)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from moe_specialists.service.app import create_app
from moe_specialists.service.jobs import window
from tests.service.conftest import AUTH, KEY, gateway_settings, wait_ready
from tests.service.fake_engine import fake_engines

TWO_PARAGRAPHS = ("The weather is nice today. The children are playing in the garden.\n\n"
                  "We are going to the park tomorrow.")
DEEPL = {"Authorization": f"DeepL-Auth-Key {KEY}"}


@pytest.fixture(scope="module")
def client(registry_dir):
    settings = gateway_settings(registry_dir).model_copy(
        update={"max_chars_per_text": None, "max_chars_per_batch": 131072, "max_segment_chars": 40,
                "max_batch_size": 8})
    with TestClient(create_app(settings, engine_factory=fake_engines())) as c:
        wait_ready(c)
        yield c


def translate(client, **body):
    return client.post("/v1/translate", json={"source": "en", "target": "de", **body}, headers=AUTH)


def test_every_paragraph_translated_native(client):
    r = translate(client, text=TWO_PARAGRAPHS)
    assert r.status_code == 200, r.text
    (item,) = r.json()["translations"]
    assert item["text"] == TWO_PARAGRAPHS and item["segments"] == 3 and item["finish_reason"] == "stop"
    assert item["generated_tokens"] == 5 + 7 + 7


def test_every_paragraph_translated_libretranslate_and_deepl(client):
    r = client.post("/translate", json={"q": TWO_PARAGRAPHS, "source": "en", "target": "de", "api_key": KEY})
    assert r.status_code == 200 and r.json()["translatedText"] == TWO_PARAGRAPHS, r.text
    r = client.post("/v2/translate", json={"text": [TWO_PARAGRAPHS], "target_lang": "DE", "source_lang": "EN"},
                    headers=DEEPL)
    assert r.status_code == 200 and r.json()["translations"][0]["text"] == TWO_PARAGRAPHS, r.text


def test_batch_keeps_every_text_blank_ones_as_they_are(client):
    texts = ["I am home.  You are out.", " \n ", "Bye now!\nSee you."]
    r = translate(client, text=texts)
    assert r.status_code == 200, r.text
    items = r.json()["translations"]
    assert [i["text"] for i in items] == texts
    assert [(i["segments"], i["route"]) for i in items] == [(2, "exact"), (0, "none"), (2, "exact")]
    assert r.headers["X-Specialist"] == "tiny-en-de"


def test_long_sentence_split_at_words_not_truncated(client):
    text = "we walked along the river and then we sat down under the old tree near the bridge"  # 17 words
    (item,) = translate(client, text=text).json()["translations"]
    # max_segment_chars 40: "we walked along the river and then we " (38) / "sat down under the old tree near the " /
    # "bridge"; each under 8 words, so nothing is cut off
    assert item["text"] == text and item["segments"] == 3 and item["finish_reason"] == "stop"


def test_sixty_thousand_characters_accepted_and_translated(client):
    sentences = [f"This is sentence {i}." for i in range(2800)]
    text = "\n\n".join(" ".join(sentences[i:i + 10]) for i in range(0, len(sentences), 10))
    assert len(text) > 60_000
    r = translate(client, text=text)
    assert r.status_code == 200, r.text[:300]
    (item,) = r.json()["translations"]
    assert item["text"] == text and item["segments"] == 2800
    assert client.app.state.pool.engines["tiny-en-de"].inflight == 0


def test_request_limit_in_each_api_shape(client):
    text = "a " * 65536 + "b"  # 131073 characters
    r = translate(client, text=text)
    assert r.status_code == 413 and r.json()["limit"] == 131072 and "limit is 131072" in r.json()["error"]
    r = client.post("/translate", json={"q": text, "source": "en", "target": "de", "api_key": KEY})
    assert r.status_code == 413 and "limit is 131072" in r.json()["error"]
    r = client.post("/v2/translate", json={"text": [text], "target_lang": "DE", "source_lang": "EN"}, headers=DEEPL)
    assert r.status_code == 413 and "limit is 131072" in r.json()["message"]


@pytest.mark.parametrize(("split", "expected"), [
    (None, "Dear Anna,\nthank you.  Bye."),  # "1": at sentence ends and line breaks, the source's spaces kept
    ("1", "Dear Anna,\nthank you.  Bye."),
    ("nonewlines", "Dear Anna, thank you.  Bye."),  # the line break inside a sentence is read as a space
    ("0", "Dear Anna, thank you. Bye."),  # one segment: the fake's single spaces
])
def test_deepl_split_sentences(client, split, expected):
    body = {"text": ["Dear Anna,\nthank you.  Bye."], "target_lang": "DE", "source_lang": "EN"}
    if split is not None:
        body["split_sentences"] = split
    r = client.post("/v2/translate", data=body, headers=DEEPL)
    assert r.status_code == 200 and r.json()["translations"][0]["text"] == expected, r.text


@pytest.mark.parametrize(("field", "value"), [("split_sentences", "2"), ("preserve_formatting", "maybe")])
def test_deepl_bad_options_400(client, field, value):
    r = client.post("/v2/translate", json={"text": ["Hi."], "target_lang": "DE", field: value}, headers=DEEPL)
    assert r.status_code == 400 and field in r.json()["message"] and "accepted" in r.json()["message"], r.text


@pytest.mark.parametrize("value", ["1", True, 0])
def test_deepl_preserve_formatting_accepted(client, value):
    r = client.post("/v2/translate", json={"text": ["see you.  ok"], "target_lang": "DE", "source_lang": "EN",
                                           "preserve_formatting": value}, headers=DEEPL)
    assert r.status_code == 200 and r.json()["translations"][0]["text"] == "see you.  ok", r.text


def test_markup_segmented_outside_tags(client):
    doc = "<p>One two. Three <b>four five</b>.  Six.</p><p> </p><br>"
    r = client.post("/translate", json={"q": doc, "source": "en", "target": "de", "format": "html",
                                        "api_key": KEY})
    assert r.status_code == 200 and r.json()["translatedText"] == doc.replace("<br>", "<br/>"), r.text
    only_markup = "<p> </p><br/><script>x = 1;</script>"
    r = client.post("/v2/translate", json={"text": [only_markup], "target_lang": "DE", "source_lang": "EN",
                                           "tag_handling": "html"}, headers=DEEPL)
    assert r.status_code == 200 and r.json()["translations"][0]["text"] == only_markup, r.text


def test_markup_nested_too_deep_4xx_in_each_shape(client):
    doc = "<b>" * 2000 + "deep" + "</b>" * 2000
    r = client.post("/translate", json={"q": doc, "source": "en", "target": "de", "format": "html",
                                        "api_key": KEY})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == ("the HTML is nested 2000 elements deep; the limit is 256: send it flatter, or as "
                                 "text") and r.json()["code"] == "markup_too_deep"
    r = client.post("/v2/translate", json={"text": [doc], "target_lang": "DE", "tag_handling": "xml"},
                    headers=DEEPL)
    assert r.status_code == 400 and "XML is nested 2000 elements deep" in r.json()["message"], r.text


def test_srt_broken_timestamp_400_naming_the_line(client):
    srt = "1\n00:00:01,000 --> 00:00:02,000\nGood morning.\n\n2\n00:00:03 -> 00:00:04\nGood night.\n"
    files = {"file": ("talk.srt", srt.encode(), "application/x-subrip")}
    r = client.post("/translate_file", data={"source": "en", "target": "de", "api_key": KEY}, files=files)
    assert r.status_code == 400 and r.json()["code"] == "invalid_srt", r.text
    assert r.json()["error"].startswith("line 6 of the SubRip file, '00:00:03 -> 00:00:04', is not a timing line")
    good = srt.replace("00:00:03 -> 00:00:04", "00:00:03,000 --> 00:00:04,000")
    files = {"file": ("talk.srt", good.encode(), "application/x-subrip")}
    r = client.post("/translate_file", data={"source": "en", "target": "de", "api_key": KEY}, files=files)
    assert r.status_code == 200, r.text
    url = r.json()["translatedFileUrl"]
    assert client.get(url[url.index("/download_file"):]).text == good


def events_of(raw: str) -> list[tuple[str | None, dict]]:
    out = []
    for block in raw.split("\n\n"):
        if block.strip():
            head, _, data = block.rpartition("data: ")
            out.append((head.removeprefix("event: ").strip() or None, json.loads(data)))
    return out


def test_stream_segment_by_segment_in_order(client):
    with client.stream("POST", "/v1/translate", headers=AUTH,
                       json={"text": " " + TWO_PARAGRAPHS + "\n", "source": "en", "target": "de",
                             "stream": True}) as r:
        assert r.status_code == 200 and r.headers["X-Specialist"] == "tiny-en-de"
        events = events_of(r.read().decode())
    (kind, meta), (done_kind, done) = events[0], events[-1]
    assert kind == "meta" and meta["segments"] == 3 and done_kind == "done"
    deltas = [data for kind, data in events[1:-1]]
    assert all(kind is None for kind, _ in events[1:-1])
    assert [d["segment"] for d in deltas] == sorted(d["segment"] for d in deltas)
    assert {d["segment"] for d in deltas} == {0, 1, 2}
    assert "".join(d["delta"] for d in deltas) == done["translation"] == " " + TWO_PARAGRAPHS + "\n"
    assert done["segments"] == 3 and done["generated_tokens"] == 19 and done["finish_reason"] == "stop"


def test_stream_blank_text(client):
    with client.stream("POST", "/v1/translate", headers=AUTH,
                       json={"text": "\n\n", "source": "en", "target": "de", "stream": True}) as r:
        events = events_of(r.read().decode())
    assert [k for k, _ in events] == ["meta", "done"] and events[1][1]["translation"] == "\n\n"


def test_window():
    assert window(texts=1, segments=600, free=64, most=32) == 32  # a long text: as many as the engine batches
    assert window(texts=1, segments=3, free=64, most=32) == 3
    assert window(texts=2, segments=600, free=5, most=32) == 5  # what is free
    assert window(texts=4, segments=4, free=3, most=32) == 4  # one slot per text at least: the queue refuses
