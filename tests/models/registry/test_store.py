"""The store: names on disk, add/get/list/remove, damaged entries, registering a folder, the default folder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from moe_specialists.models.registry.entries import Quality
from moe_specialists.models.registry.errors import (
    CorruptEntryError,
    DuplicateSpecialistError,
    UnknownSpecialistError,
)
from moe_specialists.models.registry.store import Registry, default_registry_dir
from tests.models.registry.tiny import make_entry


@pytest.mark.parametrize("name", ["a", "7", "qwen3-30b-a3b.en-de_v2", "x" * 64, "a..b"])
def test_good_names(tmp_path: Path, name: str) -> None:
    reg = Registry(tmp_path)
    reg.add(make_entry(name))
    assert reg.get(name).name == name
    assert (tmp_path / "entries" / f"{name}.json").is_file()


def test_add_get_list_remove_round_trip(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    assert reg.list() == [] and reg.names() == []
    q = Quality(metric="chrF", direction="en-de", score=51.25, num_sentences=1012)
    a = reg.add(make_entry("b", quality=[q], weight_bytes=10, base_weight_bytes=25))
    reg.add(make_entry("a", languages=["en", "de", "fr"], directions=[]))
    assert reg.get("b") == a and reg.get("b").bytes_saved == 15
    assert [e.name for e in reg.list()] == ["a", "b"]
    assert "a" in reg and "zz" not in reg
    assert reg.remove("a").name == "a"
    assert reg.names() == ["b"]


def test_unknown_and_duplicate_names_say_what_exists(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.add(make_entry("en-de"))
    reg.add(make_entry("de-en"))
    with pytest.raises(UnknownSpecialistError) as err:
        reg.get("fr-en")
    assert isinstance(err.value, KeyError)
    assert str(err.value) == f"no specialist named 'fr-en' in {tmp_path}; registered: ['de-en', 'en-de']"
    with pytest.raises(KeyError, match="registered: \\['de-en', 'en-de'\\]"):
        reg.remove("fr-en")
    with pytest.raises(DuplicateSpecialistError, match="already registered.*overwrite") as dup:
        reg.add(make_entry("en-de", base="other"))
    assert isinstance(dup.value, ValueError)
    assert reg.get("en-de").base == "org/base"
    reg.add(make_entry("en-de", base="other"), overwrite=True)
    assert reg.get("en-de").base == "other"
    with pytest.raises(UnknownSpecialistError, match="registered: none"):
        Registry(tmp_path / "empty").get("x")


def test_entries_are_plain_json_and_damage_is_reported(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.add(make_entry("a"))
    data = json.loads((tmp_path / "entries" / "a.json").read_text())
    assert data["name"] == "a" and data["directions"] == ["en-de"]
    (tmp_path / "entries" / "b.json").write_text('{"name": "b", "surprise": 1}')
    with pytest.raises(CorruptEntryError, match="b.json: not a valid specialist entry") as err:
        reg.get("b")
    assert "base: Field required" in str(err.value) and "surprise: Extra inputs" in str(err.value)
    assert "\n" not in str(err.value)
    (tmp_path / "entries" / ".tmp-c.json.xyz").write_text('{"name": "c"')  # a dead writer's leftover
    (tmp_path / "entries" / "notes.txt").write_text("ignored")
    assert reg.names() == ["a", "b"]
    assert reg.remove("b") is None  # a damaged entry can be removed; a writer cleans the leftovers
    assert sorted(p.name for p in (tmp_path / "entries").iterdir()) == ["a.json", "notes.txt"]


def test_register_dir(tiny: SimpleNamespace, tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    e = reg.register_dir("tiny", tiny.spec, base=tiny.base, languages=["en", "de"])
    assert reg.get("tiny") == e and e.source == "local"
    with pytest.raises(DuplicateSpecialistError):
        reg.register_dir("tiny", tiny.spec)


def test_default_registry_dir(tmp_path: Path) -> None:
    assert default_registry_dir({"MOE_REGISTRY_DIR": str(tmp_path / "r")}) == tmp_path / "r"
    assert default_registry_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "moe-specialists" / "registry"
    with pytest.raises(ValueError, match="MOE_SPECIALISTS_REGISTRY is no longer read: set MOE_REGISTRY_DIR"):
        default_registry_dir({"MOE_SPECIALISTS_REGISTRY": "x", "MOE_REGISTRY_DIR": "y"})
