"""Settings, --specialist options, registry entries and the zero-configuration default (no engines)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moe_specialists.models.registry.entries import SpecialistEntry
from moe_specialists.service import cli
from moe_specialists.service.app import create_app, specialist_specs
from moe_specialists.service.settings import Settings, SpecialistSpec


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


def test_serve_without_options_serves_the_default_registry_when_it_holds_entries(tmp_path, monkeypatch, caplog):
    """The registry `registry ...` and `prune --register` fill ($XDG_CACHE_HOME/moe-specialists/registry here):
    served when it holds entries, else the bundled demo; the log says which."""
    import logging

    from moe_specialists.models.registry.store import Registry

    monkeypatch.delenv("MOE_REGISTRY_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(cli.BUNDLED_REGISTRY_ENV, str(tmp_path / "bundled"))
    default = tmp_path / "cache" / "moe-specialists" / "registry"
    caplog.set_level(logging.INFO, logger=cli.__name__)
    demo = cli.what_to_serve(Settings())
    assert demo.registry_dir == tmp_path / "bundled" and "is empty: serving the bundled demo" in caplog.text
    Registry(default).add(SpecialistEntry(name="de-50", base="b", path="/p", family="qwen3_moe",
                                          directions=["en-de"]))
    assert cli.what_to_serve(Settings()).registry_dir == default
    assert f"serving the default registry {default}: de-50" in caplog.text
    named = Settings(registry_dir=tmp_path / "other")
    assert cli.what_to_serve(named) is named


def test_zero_configuration_materialises_the_bundled_specialists(tmp_path, monkeypatch):
    """No settings: the bundled plans are applied once into a cached registry (the second call reuses the
    folders) and the settings point at it; entries carry the savings the metrics report."""
    monkeypatch.setenv(cli.BUNDLED_REGISTRY_ENV, str(tmp_path / "bundled"))
    settings = cli.zero_configuration(Settings())
    assert settings.registry_dir == tmp_path / "bundled" and settings.enforce_eager
    specs = {s.name: s for s in specialist_specs(settings)}
    assert set(specs) == {"en-de", "multilingual"}
    en_de = specs["en-de"]
    assert en_de.directions == ["en-de", "de-en"] and en_de.experts_total == 8 * 32
    assert en_de.experts_kept == sum([18, 22, 17, 14, 14, 13, 16, 14]) == 128  # plans/en-de.json: 50% dropped
    assert en_de.base_weight_bytes == 23_590_144 * 2  # bf16 parameters of the bundled model (its card)
    assert en_de.parameters == 14_120_192  # 23.59M - 128 dropped experts x 73,984 parameters
    assert en_de.weight_bytes == 2 * en_de.parameters
    assert "en" in specs["multilingual"].languages and specs["multilingual"].experts_kept == 192
    def shards() -> dict:
        return {p: p.stat().st_mtime_ns for p in (tmp_path / "bundled" / "cache").glob("*/*.safetensors")}

    first = shards()
    cli.zero_configuration(Settings())
    assert first and shards() == first
