"""Materialising from base + plan with the real ``models.apply.apply_plan``: cached by plan hash, nothing left
behind by a failed build."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from moe_specialists.models.registry.errors import DuplicateSpecialistError
from moe_specialists.models.registry.materialise import default_apply, materialise, plan_hash
from moe_specialists.models.registry.store import Registry
from tests.models.registry.tiny import PER_EXPERT, tiny_plan


def test_materialise_from_base_and_plan_is_cached(tiny: SimpleNamespace, tmp_path: Path) -> None:
    calls = []

    def counting_apply(plan, base, out):
        calls.append(out)
        return default_apply(plan, base, out)

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan(tiny.base, [0, 2, 5, 7])))
    reg = Registry(tmp_path / "reg")
    e = materialise(reg, "en-de", plan, base=tiny.base, directions=["en-de"], apply=counting_apply)
    key = plan_hash(plan, tiny.base)
    assert e.plan_hash == key and e.source == "materialised" and e.plan == str(plan.resolve())
    assert Path(e.path) == (tmp_path / "reg" / "cache" / key).resolve()
    assert e.experts_per_layer == [8, 4]
    assert e.parameters == 428_416 == json.loads(plan.read_text())["parameters"]
    assert e.base_weight_bytes == 4 * 527_232 and e.bytes_saved == 4 * 4 * PER_EXPERT
    assert reg.get("en-de") == e

    again = materialise(reg, "en-de-2", plan, base=tiny.base, apply=counting_apply)  # cache hit
    assert len(calls) == 1 and again.path == e.path and again.checksums == e.checksums
    with pytest.raises(DuplicateSpecialistError):
        materialise(reg, "en-de", plan, base=tiny.base, apply=counting_apply)

    other = tmp_path / "plan2.json"  # another plan: another cache folder
    other.write_text(json.dumps(tiny_plan(tiny.base, [1, 3, 4])))
    e3 = materialise(reg, "narrow", other, base=tiny.base, apply=counting_apply)
    assert len(calls) == 2 and e3.path != e.path and e3.experts_per_layer == [8, 3]


def test_materialise_failure_leaves_nothing(tiny: SimpleNamespace, tmp_path: Path) -> None:
    def broken_apply(plan, base, out):
        raise ValueError("this plan was made for another model")

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan(tiny.base, [0, 1])))
    reg = Registry(tmp_path / "reg")
    with pytest.raises(ValueError, match="another model"):
        materialise(reg, "x", plan, base=tiny.base, apply=broken_apply)
    assert reg.names() == [] and not (tmp_path / "reg" / "cache" / plan_hash(plan, tiny.base)).exists()


def test_plan_hash_is_of_the_plan_bytes_and_the_base(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(b"{}")
    assert plan_hash(plan) == hashlib.sha256(b"{}\0").hexdigest()[:16]
    assert plan_hash(plan, "org/base") == hashlib.sha256(b"{}\0org/base").hexdigest()[:16]
    assert plan_hash(plan, tmp_path) == hashlib.sha256(b"{}\0" + str(tmp_path.resolve()).encode()).hexdigest()[:16]
