"""The main job, as README's `make serve` runs it: `moe-specialists serve` with no configuration serves the
pruned specialists of the bundled tiny translator in real vLLM (CPU) and translates for real."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.service.conftest import serve_command

pytestmark = pytest.mark.slow  # make test-fast skips it: the serve command end to end

# Our own sentences with our own reference translations (no evaluation data in the repository).
EN_DE = [
    ("The weather is nice today.", "Das Wetter ist heute schön."),
    ("My brother lives in a small house near the river.", "Mein Bruder wohnt in einem kleinen Haus am Fluss."),
    ("The children are playing in the garden.", "Die Kinder spielen im Garten."),
    ("We need more time to finish the work.", "Wir brauchen mehr Zeit, um die Arbeit zu beenden."),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("main-command")
    env = {k: v for k, v in os.environ.items() if k != "MOE_REGISTRY_DIR"}
    env |= {"MOE_BUNDLED_REGISTRY": str(tmp / "bundled"), "MOE_ACCESS_LOG": "false",
            "XDG_CACHE_HOME": str(tmp / "cache")}  # an empty default registry: the bundled demo is served
    with serve_command([], env, tmp / "serve.log") as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


def test_translates_en_de_with_the_pair_specialist(gateway):
    import sacrebleu

    r = gateway.post("/v1/translate", json={"text": [en for en, _ in EN_DE], "source": "en", "target": "de"})
    assert r.status_code == 200, r.text
    items = r.json()["translations"]
    assert {(t["specialist"], t["route"]) for t in items} == {("en-de", "exact")}
    hyps = [t["text"] for t in items]
    chrf = sacrebleu.corpus_chrf(hyps, [[de for _, de in EN_DE]]).score
    assert chrf > 35, f"chrF {chrf:.1f}: {hyps}"  # the 50%-pruned specialist scores ~35 on FLORES en-de


def test_other_pairs_go_to_the_multilingual_specialist(gateway):
    r = gateway.post("/translate", json={"q": "Die Kinder spielen im Garten.", "source": "auto", "target": "fr"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Specialist"] == "multilingual" and r.json()["detectedLanguage"]["language"] == "de"
    assert r.json()["translatedText"].strip()


def test_unserved_pair_lists_what_is_served(gateway):
    r = gateway.post("/v1/translate", json={"text": "Hello", "source": "en", "target": "ja"})
    assert r.status_code == 400
    assert "en-de" in r.text and "multilingual" in r.text


def test_metrics_show_the_memory_saved(gateway):
    text = gateway.get("/metrics").text
    saved = {
        line.split('specialist="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("moe_specialist_bytes_saved{")
    }
    assert saved["en-de"] == 2 * 128 * 73_984  # 128 experts of 73,984 bf16 parameters dropped
    assert saved["multilingual"] == 2 * 64 * 73_984
