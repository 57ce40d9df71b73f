"""DeepL's document routes (/v2/document: upload, status, download) on in-memory engines
(tests/service/fake_engine.py: a text comes back as its words, so a translated file equals its source when
its structure was kept), driven by deepl-python's ``translate_document`` and by plain HTTP for the errors.
With real vLLM: test_clients.py::test_deepl_translate_document_txt_and_html."""

from __future__ import annotations

import deepl
import httpx
import pytest

from moe_specialists.service.app import create_app
from moe_specialists.service.settings import Settings, SpecialistSpec
from tests.service.conftest import ServerThread, free_port, wait_ready
from tests.service.fake_engine import fake_engines

TXT = "The weather is nice today. The children play.\n\nWe go to the park tomorrow.\n"
HTML = "<html><body><h1>Welcome</h1><p>The <b>cat</b> sleeps. The dog runs.</p></body></html>"
SRT = "1\n00:00:01,000 --> 00:00:02,000\nHello there\n\n2\n00:00:03,000 --> 00:00:04,500\nGood bye\n"
MD = "# Title\n\nSome text here.\n\n- an item\n"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("documents")
    settings = Settings(specialists=[SpecialistSpec(name="multi", path=str(tmp / "m"), languages=["en", "de"])],
                        state_dir=tmp / "state", access_log=False, max_file_chars=2000, default_max_tokens=32)
    with ServerThread(create_app(settings, engine_factory=fake_engines(0.01)), port := free_port()):
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url) as c:
            wait_ready(c)
        yield url


@pytest.mark.parametrize(("name", "content"), [("a.txt", TXT), ("page.html", HTML), ("subs.srt", SRT),
                                               ("notes.md", MD)])
def test_translate_document_with_deepl_python_keeps_the_structure(url, tmp_path, name, content):
    translator = deepl.Translator("any-key", server_url=url)
    (tmp_path / name).write_text(content)
    status = translator.translate_document_from_filepath(tmp_path / name, tmp_path / f"de-{name}",
                                                         source_lang="EN", target_lang="DE")
    assert status.done and status.billed_characters == len(content)
    assert (tmp_path / f"de-{name}").read_text() == content


def test_status_result_and_errors_over_http(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        def upload(name: str, content: bytes, **fields):
            return c.post("/v2/document", data={"target_lang": "DE", "source_lang": "EN", **fields},
                          files={"file": (name, content)})

        r = upload("a.txt", TXT.encode())
        assert r.status_code == 200, r.text
        doc = r.json()
        r = c.post(f"/v2/document/{doc['document_id']}", json={"document_key": doc["document_key"]})
        assert r.json() == {"document_id": doc["document_id"], "status": "done", "billed_characters": len(TXT)}
        r = c.post(f"/v2/document/{doc['document_id']}/result", json={"document_key": doc["document_key"]})
        assert r.status_code == 200 and r.text == TXT and 'filename="a.txt"' in r.headers["content-disposition"]
        r = c.post(f"/v2/document/{doc['document_id']}/result", json={"document_key": doc["document_key"]})
        assert r.status_code == 404 and "Document not found" in r.json()["message"]  # downloaded once
        # Slow enough (0.01 s a word, 200 words) to be translating when polled: the result is not ready yet.
        long = upload("long.txt", ("word " * 200).encode())
        doc = long.json()
        r = c.post(f"/v2/document/{doc['document_id']}/result", json={"document_key": doc["document_key"]})
        assert r.status_code == 503 and "Document not ready" in r.json()["message"]
        r = c.post(f"/v2/document/{doc['document_id']}", json={"document_key": "0" * 64})
        assert r.status_code == 404 and "Document not found" in r.json()["message"]

        refused = {
            "a.pdf": (upload("a.pdf", b"%PDF"), 400, "'.pdf' is not accepted; accepted: .txt, .html, .htm, .srt"),
            "broken.srt": (upload("broken.srt", b"1\nHello\n\n"), 400, "is not a timing line"),
            "big.txt": (upload("big.txt", b"a" * 10_000_000), 413, "more than 2000 characters"),
            "latin1.txt": (upload("latin1.txt", "Grüße".encode("latin-1")), 400, "not UTF-8"),
            "target": (upload("a.txt", b"Hi", target_lang="XX"), 400, "unknown target language"),
            "format": (upload("a.txt", b"Hi", output_format="docx"), 400, "into txt only"),
            "glossary": (upload("a.txt", b"Hi", glossary_id="nope"), 404, "Glossary not found"),
            "no file": (c.post("/v2/document", data={"target_lang": "DE"}), 400, "multipart field 'file'"),
        }
        for what, (r, status, message) in refused.items():
            assert r.status_code == status and message in r.json()["message"], (what, r.status_code, r.text)


def test_a_glossary_applies_to_a_document(url, tmp_path):
    translator = deepl.Translator("any-key", server_url=url)
    glossary = translator.create_glossary("park", "EN", "DE", {"park": "Stadtpark"})
    (tmp_path / "a.txt").write_text(TXT)
    translator.translate_document_from_filepath(tmp_path / "a.txt", tmp_path / "a.de.txt", source_lang="EN",
                                                target_lang="DE", glossary=glossary)
    # the fake engine copies the placeholder it is given; the gateway puts the target term in its place
    assert (tmp_path / "a.de.txt").read_text() == TXT.replace("park", "Stadtpark")
    translator.delete_glossary(glossary)
