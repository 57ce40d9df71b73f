"""Entries: names, the schema, and entries built from a tiny specialist folder (counts from the headers)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from moe_specialists.models.registry.entries import SpecialistEntry, entry_from_dir, validate_name, weight_stats
from moe_specialists.models.registry.errors import InvalidNameError
from moe_specialists.models.registry.store import Registry
from tests.models.registry.tiny import ATTN, EMBED_HEAD_NORM, NORMS, PER_EXPERT, make_entry

BAD_NAMES = [
    "",  # empty
    "../x",  # traversal
    "..",
    "a/../../x",
    "/abs",  # absolute
    "a/b",  # separator
    "a\\b",
    ".hidden",  # leading dot
    "-x",  # leading dash (looks like an option)
    "_x",
    "Upper",  # case look-alikes collide on case-insensitive file systems
    "\u0430bc",  # Cyrillic a
    "\uff41bc",  # fullwidth a
    "caf\u00e9",  # non-ASCII letter
    "a\u200bb",  # zero-width space
    "a b",
    "a\n",  # trailing newline ($ would accept it in Python's re)
    "a\x00b",  # NUL
    "x" * 65,  # too long
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[ascii(n)[:20] for n in BAD_NAMES])
def test_bad_names_are_refused_everywhere(tmp_path: Path, name: str) -> None:
    reg = Registry(tmp_path / "reg")
    with pytest.raises(InvalidNameError, match="invalid specialist name") as err:
        validate_name(name)
    assert "a-z 0-9" in str(err.value)  # says what is accepted
    assert isinstance(err.value, ValueError)
    with pytest.raises(ValidationError):
        make_entry(name)
    for call in (reg.get, reg.remove):
        with pytest.raises(InvalidNameError):
            call(name)
    with pytest.raises(InvalidNameError):  # an entry that bypassed validation is still refused
        reg.add(SpecialistEntry.model_construct(**make_entry().model_dump() | {"name": name}))
    with pytest.raises(InvalidNameError):
        entry_from_dir(name, tmp_path)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"]
    assert written == []


def test_extra_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="surprise"):
        SpecialistEntry.model_validate(make_entry().model_dump() | {"surprise": 1})


def test_entry_from_dir_counts_from_headers(tiny: SimpleNamespace) -> None:
    spec_params = EMBED_HEAD_NORM + 2 * (ATTN + NORMS) + (8 + 4) * PER_EXPERT  # = 428_416
    base_params = EMBED_HEAD_NORM + 2 * (ATTN + NORMS) + (8 + 8) * PER_EXPERT  # = 527_232
    assert (spec_params, base_params) == (428_416, 527_232)
    assert (tiny.spec_params, tiny.base_params) == (spec_params, base_params)
    assert weight_stats(tiny.spec) == (spec_params, 4 * spec_params)  # float32: 4 bytes a parameter

    e = entry_from_dir("tiny-en-de", tiny.spec, base=tiny.base, directions=["en-de"])
    assert e.family == "qwen3_moe"
    assert e.experts_per_layer == [8, 4]
    assert e.parameters == spec_params
    assert e.weight_bytes == 4 * spec_params  # float32, one tensor per weight, no padding
    assert e.base_weight_bytes == 4 * base_params
    assert e.bytes_saved == 4 * 4 * PER_EXPERT  # layer 1 dropped 4 experts (with their router rows)
    assert e.base == str(tiny.base.resolve()) and e.path == str(tiny.spec.resolve())
    assert e.plan is None and e.created_at is not None
    files = sorted(p.name for p in tiny.spec.iterdir())
    assert sorted(e.checksums) == files == ["config.json", "generation_config.json", "model.safetensors"]
    for f, h in e.checksums.items():
        assert h == hashlib.sha256((tiny.spec / f).read_bytes()).hexdigest()


def test_entry_from_dir_base_model_and_errors(tiny: SimpleNamespace, tmp_path: Path) -> None:
    e = entry_from_dir("base", tiny.base, with_checksums=False)
    assert e.base == e.path and e.bytes_saved == 0 and e.experts_per_layer == [8, 8] and e.checksums == {}
    with pytest.raises(FileNotFoundError, match="has no config.json: a specialist folder holds config.json"):
        entry_from_dir("x", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        entry_from_dir("x", tmp_path)
