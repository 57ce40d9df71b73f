"""The translation cache (service/cache.py): its byte arithmetic and LRU order by hand, the identity of what a
specialist serves, and the gateway answering a repeated sentence without its engine (in-memory engines that
count their calls: tests/service/fake_engine.py) until the specialist is replaced. With real vLLM:
test_clients.py::test_cache_hits_through_the_real_clients."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from moe_specialists.service.app import create_app
from moe_specialists.service.cache import ENTRY_OVERHEAD, TranslationCache, cacheable, entry_bytes
from moe_specialists.service.engines.base import Generation, GenerationParams, identity
from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.settings import Settings, SpecialistSpec
from tests.service.conftest import metric, wait_for, wait_ready
from tests.service.fake_engine import FakeEngine

GREEDY = GenerationParams(max_tokens=8)


def key(prompt: str, who: str = "id-1") -> tuple:
    return (who, "en", "de", prompt, GREEDY)


def test_entry_bytes_are_prompt_and_output_in_utf8_plus_overhead():
    # "Grüße" is 7 bytes in UTF-8 (ü and ß two each); "Hi<|im_end|>" 12
    assert entry_bytes(key("Grüße"), Generation("Hi<|im_end|>", 1, 3)) == 7 + 12 + ENTRY_OVERHEAD


def test_least_recently_used_goes_first_and_evictions_are_counted():
    metrics = GatewayMetrics()
    one = Generation("x" * 50, 1, 1)  # each entry: 50 + 50 + 200 = 300 bytes
    cache = TranslationCache(900, metrics)  # room for three
    for prompt in ("a" * 50, "b" * 50, "c" * 50):
        cache.put(key(prompt), one)
    assert (len(cache), cache.bytes) == (3, 900)
    assert cache.get(key("a" * 50), "s") == one  # a is now the most recent: b is the least
    cache.put(key("d" * 50), one)
    assert cache.get(key("b" * 50), "s") is None and cache.get(key("a" * 50), "s") == one
    assert metrics.cache_evictions._value.get() == 1
    assert (metrics.cache_hits.labels("s")._value.get(), metrics.cache_misses.labels("s")._value.get()) == (2, 1)
    assert (metrics.cache_bytes._value.get(), metrics.cache_entries._value.get()) == (900, 3)


def test_an_entry_larger_than_the_cache_is_not_kept():
    cache = TranslationCache(250, GatewayMetrics())
    cache.put(key("a" * 40), Generation("b" * 20, 1, 1))  # 260 bytes
    assert len(cache) == 0
    with pytest.raises(ValueError, match="at least 1 byte"):
        TranslationCache(0, GatewayMetrics())


def test_only_answers_that_repeat_are_cacheable():
    assert cacheable(GREEDY)
    assert cacheable(GenerationParams(max_tokens=8, temperature=0.7, seed=3))
    assert not cacheable(GenerationParams(max_tokens=8, temperature=0.7))


def test_identity_follows_the_files_of_a_folder_and_the_starts_of_anything_else(tmp_path):
    folder = tmp_path / "en-de"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "model.safetensors").write_bytes(b"12345678")
    spec = SpecialistSpec(name="en-de", path=str(folder), directions=["en-de"])
    first = identity(spec, 0)
    assert identity(spec, 0) == identity(spec, 5) == first  # the same files: the same identity at any start
    os.utime(folder / "sub" / "model.safetensors", ns=(1, 1))  # rewritten (here: only its mtime differs)
    assert identity(spec, 0) != first
    for path in ("Qwen/Qwen3-30B-A3B", "http://127.0.0.1:9/v1"):  # weights the gateway cannot see
        other = spec.model_copy(update={"path": path})
        assert identity(other, 0) != identity(other, 1)
        assert identity(other, 1) == identity(other, 1)


class CountingEngine(FakeEngine):
    """A FakeEngine that counts the segments it is asked to generate."""

    calls = 0

    async def stream(self, source, target, text, params, incremental=True):
        CountingEngine.calls += 1
        async for g in super().stream(source, target, text, params, incremental):
            yield g


@pytest.fixture
def client(tmp_path):
    folder = tmp_path / "en-de"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    settings = Settings(specialists=[SpecialistSpec(name="en-de", path=str(folder), directions=["en-de"])],
                        translation_cache_size="1MiB", state_dir=tmp_path / "state", access_log=False,
                        engine_restart_initial_delay_s=0.1, engine_restart_max_delay_s=0.1)

    def build(spec, settings, metrics, memory_share):
        return CountingEngine(spec, settings, metrics, 0.0)

    CountingEngine.calls = 0
    with TestClient(create_app(settings, engine_factory=build)) as c:
        wait_ready(c)
        yield c


def calls_for(client, **body) -> tuple[int, dict]:
    before = CountingEngine.calls
    r = client.post("/v1/translate", json={"source": "en", "target": "de", **body})
    assert r.status_code == 200, r.text
    return CountingEngine.calls - before, r.json()


def test_a_repeated_sentence_is_answered_without_the_engine(client):
    text = "The cat sits on the mat. The dog runs home."
    n, first = calls_for(client, text=text)
    assert n == 2 and metric(client, "moe_gateway_translation_cache_misses_total", specialist="en-de") == 2
    n, again = calls_for(client, text=text)
    assert n == 0 and again["translations"][0]["text"] == first["translations"][0]["text"]
    assert metric(client, "moe_gateway_translation_cache_hits_total", specialist="en-de") == 2
    n, _ = calls_for(client, text="The dog runs home. A bird sings.")  # one sentence known, one new
    assert n == 1 and metric(client, "moe_gateway_translation_cache_hits_total", specialist="en-de") == 3
    r = client.post("/translate", json={"q": text, "source": "en", "target": "de"})  # LibreTranslate's route
    assert r.json()["translatedText"] == first["translations"][0]["text"]
    assert metric(client, "moe_gateway_translation_cache_hits_total", specialist="en-de") == 5
    assert metric(client, "moe_gateway_translation_cache_entries") == 3
    assert metric(client, "moe_gateway_translation_cache_capacity_bytes") == 1024 ** 2


def test_a_streamed_text_comes_from_the_cache_too(client):
    text = "The cat sits on the mat."
    _, first = calls_for(client, text=text)
    before = CountingEngine.calls
    with client.stream("POST", "/v1/translate", json={"text": text, "source": "en", "target": "de",
                                                      "stream": True}) as r:
        raw = r.read().decode()
    assert CountingEngine.calls == before and f'"translation": "{first["translations"][0]["text"]}"' in raw


def test_sampling_without_a_seed_is_generated_every_time(client):
    body = {"text": "The cat sits.", "sampling": {"temperature": 0.7}}
    assert calls_for(client, **body)[0] == calls_for(client, **body)[0] == 1
    seeded = {"text": "The cat sits.", "sampling": {"temperature": 0.7, "seed": 1}}
    assert [calls_for(client, **seeded)[0] for _ in range(2)] == [1, 0]


def test_a_replaced_specialist_never_answers_from_its_old_entries(client):
    text = "The cat sits on the mat."
    assert [calls_for(client, text=text)[0] for _ in range(2)] == [1, 0]
    engine = client.app.state.pool.engines["en-de"]
    (Path(engine.spec.path) / "model.safetensors").write_bytes(b"new weights")
    time.sleep(0.01)  # a later mtime even on coarse clocks
    engine.fail("replaced on disk")  # the supervisor restarts it: the new start serves the new files
    wait_for(client, lambda s: s["en-de"]["state"] == "ready" and s["en-de"]["restarts"] >= 1, 30, "the restart")
    assert calls_for(client, text=text)[0] == 1


class CutOffEngine(FakeEngine):
    """Ends every generation with ``LAST``: as vLLM does for a request it aborted (closing, restarting: finished,
    reason abort), or as its stream does when the engine shuts down (no finished output at all)."""

    last = Generation("Die Ka", 2, 3, True, "abort")

    async def stream(self, source, target, text, params, incremental=True):
        yield self.last


@pytest.mark.parametrize("last", [Generation("Die Ka", 2, 3, True, "abort"), Generation("Die Ka", 2, 3)],
                         ids=["aborted", "unfinished"])
def test_a_generation_cut_off_is_an_error_not_an_answer_and_is_not_kept(tmp_path, monkeypatch, last):
    monkeypatch.setattr(CutOffEngine, "last", last)
    settings = Settings(specialists=[SpecialistSpec(name="en-de", path=str(tmp_path), directions=["en-de"])],
                        translation_cache_size="1MiB", state_dir=tmp_path / "state", access_log=False)
    with TestClient(create_app(settings, engine_factory=lambda spec, s, m, share: CutOffEngine(spec, s, m, 0))) as c:
        wait_ready(c)
        for _ in range(2):
            r = c.post("/v1/translate", json={"text": "The cat.", "source": "en", "target": "de"})
            assert r.status_code == 503 and "stopped before the end of this text" in r.json()["error"], r.text
        assert len(c.app.state.translator.cache) == 0
