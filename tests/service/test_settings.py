"""Settings, --specialist options, registry entries and the zero-configuration default (no engines)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.registry import SpecialistEntry
from service import cli
from service.app import create_app
from service.settings import Settings, SpecialistSpec


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("en-de=/models/en-de:en-de,de-en", {"path": "/models/en-de", "directions": ["en-de", "de-en"]}),
        ("multi=/m:en,de,fr", {"path": "/m", "languages": ["en", "de", "fr"]}),
        ("big=Qwen/Qwen3-30B-A3B:base", {"path": "Qwen/Qwen3-30B-A3B", "base": True}),
        ("far=http://10.0.0.5:8000:en-fr", {"path": "http://10.0.0.5:8000", "directions": ["en-fr"]}),
    ],
)
def test_parse_option(option, expected):
    spec = SpecialistSpec.parse_option(option)
    assert spec.model_dump(include=set(expected)) == expected
    assert spec.remote == spec.path.startswith("http")


@pytest.mark.parametrize(
    ("option", "says"),
    [
        ("no-equals-sign", "name=path:directions"),
        ("x=/p:en-xx", "unknown language 'xx'"),
        ("x=/p:en-en", "same source and target"),
        ("x=/p:en-de,fr", "mix of directions and languages"),
        ("x=/p:en", "serves nothing"),
        ("../evil=/p:en-de", "name"),
    ],
)
def test_parse_option_errors(option, says):
    with pytest.raises(ValueError, match=says):
        SpecialistSpec.parse_option(option)


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("MOE_SPECIALISTS", '[{"name": "en-de", "path": "/m", "directions": ["en-de"]}]')
    monkeypatch.setenv("MOE_API_KEYS", '["k1", "k2"]')
    monkeypatch.setenv("MOE_MAX_QUEUE_PER_ENGINE", "7")
    s = Settings()
    assert s.specialists[0].directions == ["en-de"] and s.api_keys == ["k1", "k2"]
    assert s.max_queue_per_engine == 7


def test_settings_refuse_bad_limits_and_duplicates():
    with pytest.raises(ValidationError, match="max_chars_per_batch"):
        Settings(max_chars_per_text=100, max_chars_per_batch=10)
    spec = SpecialistSpec(name="a", path="/m", directions=["en-de"])
    with pytest.raises(ValidationError, match="duplicate"):
        Settings(specialists=[spec, spec])


def test_from_registry_entry():
    common = {"base": "b", "path": "/p", "family": "qwen3_moe"}
    specialist = SpecialistSpec.from_entry(SpecialistEntry(name="s", plan="/p/plan.json", directions=["en-de"],
                                                           weight_bytes=10, base_weight_bytes=40, **common))
    assert not specialist.base and specialist.directions == ["en-de"] and specialist.base_weight_bytes == 40
    assert SpecialistSpec.from_entry(SpecialistEntry(name="base", **common)).base


def test_create_app_needs_something_to_serve():
    with pytest.raises(ValueError, match="no specialists"):
        create_app(Settings())


def test_zero_configuration_default(tmp_path, monkeypatch):
    """Without bundled weights, serve falls back to the labelled random demo model."""
    monkeypatch.setattr(cli, "_bundled_dir", lambda: None)
    monkeypatch.setattr(cli, "DEMO_CACHE", tmp_path / "demo")
    (spec,) = cli.default_specialists()
    assert spec.name == "tiny-random-demo" and (tmp_path / "demo" / "config.json").exists()
    assert "garbage" in (tmp_path / "demo" / "README.md").read_text()


def test_zero_configuration_serves_the_bundled_translator():
    from models.tiny_translator import BUNDLED_MODEL_DIR

    if not (BUNDLED_MODEL_DIR / "config.json").exists():
        pytest.skip("bundled translator weights not present")
    (spec,) = cli.default_specialists()
    assert spec.name == "tiny-translator" and spec.path == str(BUNDLED_MODEL_DIR)
    assert {"en", "de"} <= set(spec.languages)
