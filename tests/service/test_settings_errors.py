"""Bad MOE_* settings fail start-up with a message naming the variable, the value and what it accepts."""

from __future__ import annotations

import pytest

from moe_specialists.service.settings import Settings, SettingsInputError, accepted, load_settings


@pytest.mark.parametrize(("field", "words"), [
    ("port", "an integer >= 0 and <= 65535"),
    ("gpu_memory_share", "a number > 0 and <= 1"),
    ("engine_max_restarts", "an integer >= 0"),
    ("readiness", "'any' or 'all'"),
    ("enforce_eager", "true or false"),
    ("api_keys", 'a JSON list of strings, e.g. ["a", "b"]'),
    ("registry_dir", "a folder path (or empty: none)"),
    ("dtype", "a string"),
])
def test_accepted_in_words(field, words):
    assert accepted(Settings.model_fields[field]) == words


@pytest.mark.parametrize(("env", "says"), [
    ({"MOE_PORT": "abc"}, "MOE_PORT='abc': Input should be a valid integer, unable to parse string as an integer; "
                          "accepts an integer >= 0 and <= 65535"),
    ({"MOE_PORT": "70000"}, "MOE_PORT='70000': Input should be less than or equal to 65535"),
    ({"MOE_READINESS": "some"}, "MOE_READINESS='some': Input should be 'any' or 'all'; accepts 'any' or 'all'"),
    ({"MOE_ENGINE_RESTART_INITIAL_DELAY_S": "0"}, "MOE_ENGINE_RESTART_INITIAL_DELAY_S='0': Input should be "
                                                  "greater than 0; accepts a number > 0"),
    ({"MOE_ENFORCE_EAGER": "maybe"}, "MOE_ENFORCE_EAGER='maybe'"),
    ({"MOE_SPECIALISTS": "not json"}, "MOE_SPECIALISTS is not valid JSON: Expecting value"),
    ({"MOE_SPECIALISTS": '[{"name": "x"}]'}, "MOE_SPECIALISTS: 0.path: Field required; accepts a JSON list of "
                                             'specialists, e.g. [{"name": "en-de"'),
    ({"MOE_API_KEYS": "k1"}, 'MOE_API_KEYS is not valid JSON: Expecting value: line 1 column 1 (char 0); accepts '
                             'a JSON list of strings'),
    ({"MOE_MAX_QUEU_PER_ENGINE": "3"}, "MOE_MAX_QUEU_PER_ENGINE is not a setting (did you mean "
                                       "MOE_MAX_QUEUE_PER_ENGINE?)"),
    ({"MOE_ENGINE_RESTART_MAX_DELAY_S": "0.5"}, "engine_restart_max_delay_s must be >= "
                                                "engine_restart_initial_delay_s"),
])
def test_bad_variable_is_named_with_what_it_accepts(monkeypatch, env, says):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsInputError) as e:
        load_settings()
    assert says in str(e.value)


def test_several_bad_variables_are_all_listed(monkeypatch):
    monkeypatch.setenv("MOE_PORT", "-1")
    monkeypatch.setenv("MOE_MAX_BATCH_SIZE", "0")
    with pytest.raises(SettingsInputError) as e:
        load_settings()
    assert "MOE_PORT='-1'" in str(e.value) and "MOE_MAX_BATCH_SIZE='0'" in str(e.value)


def test_the_retired_registry_variable_names_the_one_to_set(monkeypatch):
    monkeypatch.setenv("MOE_SPECIALISTS_REGISTRY", "/tmp/y")
    with pytest.raises(SettingsInputError, match="MOE_SPECIALISTS_REGISTRY is no longer read: set MOE_REGISTRY_DIR"):
        load_settings()


def test_other_moe_variables_and_overrides_pass(monkeypatch):
    monkeypatch.setenv("MOE_BUNDLED_REGISTRY", "/tmp/x")
    monkeypatch.setenv("MOE_CACHE_DIR", "/tmp/c")  # models.file_hashes reads it (the test suite sets it too)
    monkeypatch.setenv("MOE_ENGINE_MAX_RESTARTS", "3")
    s = load_settings(port=9000)
    assert s.engine_max_restarts == 3 and s.port == 9000
    with pytest.raises(SettingsInputError, match="port='x': Input should be a valid integer"):
        load_settings(port="x")  # an option, not a variable: named by its field
