"""Which languages the gateway accepts, without engines: specs point at a remote server that is not there (the
engine is unreachable, so nothing is translated), which is enough for codes, listings, detection and errors."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from moe_specialists.models.languages import flores200
from moe_specialists.service.app import create_app
from moe_specialists.service.settings import Settings, SpecialistSpec

NOWHERE = "http://127.0.0.1:9"  # the discard port: connection refused


def app(**settings) -> TestClient:
    return TestClient(create_app(Settings(remote_timeout_s=0.5, health_interval_s=60, **settings)))


def test_specialist_languages_canonicalised():
    spec = SpecialistSpec(name="m", path=NOWHERE, languages=["EN", "deu", "zh-Hans", "pt-BR", "zho_Hant"])
    assert spec.languages == ["en", "de", "zh", "pt", "zh-Hant"]
    assert SpecialistSpec(name="d", path=NOWHERE, directions=["EN-de", "en-zh-Hant"]).directions == [
        "en-de", "en-zh-Hant"]
    with pytest.raises(ValueError, match="unknown languages"):
        SpecialistSpec(name="m", path=NOWHERE, languages=["en", "klingon"])


def test_base_model_accepts_flores200_by_default():
    with app(specialists=[SpecialistSpec(name="base", path=NOWHERE, base=True)]) as c:
        codes = {lang["code"] for lang in c.get("/v1/languages").json()["languages"]}
        assert codes == set(flores200()) and {"swh", "yo", "zh-Hant", "arz"} <= codes
        r = c.post("/v1/translate", json={"text": "Habari", "source": "swh_Latn", "target": "eng_Latn"})
        assert r.status_code == 503 and r.json()["code"] == "engine_unavailable"  # accepted, routed, no engine
        r = c.post("/v1/translate", json={"text": "Habari", "source": "sw", "target": "en"})  # sw -> swh
        assert r.status_code == 503
        r = c.post("/v1/translate", json={"text": "x", "source": "en", "target": "tlh"})  # Klingon: not FLORES
        assert r.status_code == 400 and "'tlh' is not served" in r.json()["error"]


def test_base_languages_configurable():
    specs = [SpecialistSpec(name="base", path=NOWHERE, base=True)]
    with app(specialists=specs, base_languages=["eng_Latn", "de", "tlh"]) as c:
        assert [lang["code"] for lang in c.get("/languages").json()] == ["de", "en", "tlh"]


def test_unknown_code_lists_accepted():
    with app(specialists=[SpecialistSpec(name="m", path=NOWHERE, languages=["en", "de", "zh"])]) as c:
        for path, body in [("/v1/translate", {"text": "x", "source": "en", "target": "xx"}),
                           ("/translate", {"q": "x", "source": "en", "target": "xx"})]:
            r = c.post(path, json=body)
            assert r.status_code == 400, r.text
            assert r.json()["error"].endswith("accepted: de, en, zh") and r.json()["accepted"] == ["de", "en", "zh"]
        r = c.post("/v2/translate", json={"text": ["x"], "target_lang": "XX"})
        assert r.status_code == 400 and r.json()["message"].endswith("accepted: de, en, zh")
        # zh-Hant is answered by the zh specialist (its prompt asks for Traditional Chinese)
        r = c.post("/translate", json={"q": "x", "source": "en", "target": "zt"})
        assert r.status_code == 503, r.text
        assert [lang["code"] for lang in c.get("/languages").json()] == ["de", "en", "zh-Hans"]


def test_detection_restricted_to_served():
    with app(specialists=[SpecialistSpec(name="m", path=NOWHERE, languages=["en", "fr"])]) as c:
        r = c.post("/v1/detect", json={"text": ["Das ist ein schöner Tag im Garten.", "Hello there, my friend."]})
        assert [d["language"] for d in r.json()["detections"]] == ["en", "en"]  # German is not a candidate
        r = c.post("/detect", data={"q": "Bonjour tout le monde, comment allez-vous ?"})
        assert r.json()[0]["language"] == "fr"
        r = c.post("/v1/detect", json={"text": "Hallo", "target": "xx"})
        assert r.status_code == 400
