"""Specialists loaded from the base and a plan equal the sliced copies `apply` writes: the same tensors and
greedy tokens in transformers, the same greedy tokens in vLLM (a plan view), and a tampered base is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from moe_specialists.models import file_hashes
from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.plan import plan_from_kept
from moe_specialists.models.plan_loading import (
    check_base_files,
    load_from_base,
    load_from_plan,
    read_kept_tensors,
    runs,
    view_of_plan,
)
from tests.models.test_vllm_serving import (
    FAMILIES,
    PROMPTS,
    build_tiny,
    hf_greedy,
    require_vllm_mxfp4,
    vllm_engine,
    vllm_greedy,
)

KEPT = [[0, 3, 5, 7, 9, 11, 13, 15], [1, 2, 3, 4, 5, 6], list(range(12)), [2, 4, 6, 8]]


def test_runs_by_hand():
    assert runs([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 6), (7, 9)]
    assert runs([4]) == [(4, 5)] and runs([]) == []


@pytest.fixture(params=FAMILIES)
def base_and_copy(request, tmp_path):
    base = build_tiny(tmp_path / "base", request.param)
    plan = plan_from_kept(base, KEPT)
    return base, plan, apply_plan(plan, tmp_path / "copy")


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})  # noqa: SIM118
    return out


def _kept(plan) -> dict[int, list[int]]:
    return dict(zip(plan.layers, plan.kept, strict=True))


def test_kept_tensors_equal_the_sliced_copy(base_and_copy):
    base, plan, copy = base_and_copy
    config = json.loads((base / "config.json").read_text())
    got, want = read_kept_tensors(base, adapter_for(config), _kept(plan)), _tensors(copy)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert sum(t.numel() * t.element_size() for t in got.values()) == sum(
        t.numel() * t.element_size() for t in want.values())  # the same weight bytes


def test_transformers_from_base_equals_the_sliced_copy(base_and_copy):
    base, plan, copy = base_and_copy
    model = load_from_base(base, _kept(plan))
    assert model.config.num_experts_per_layer == [len(k) for k in KEPT]
    expected = hf_greedy(copy, PROMPTS, max_new_tokens=10)
    with torch.no_grad():
        got = [model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False,
                              attention_mask=torch.ones(1, len(p), dtype=torch.long))[0, len(p):].tolist()
               for p in PROMPTS]
    assert got == expected


def test_load_from_plan_checks_the_base_first(base_and_copy, tmp_path):
    base, plan, copy = base_and_copy
    model = load_from_plan(plan)
    want = _tensors(copy)
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in want.values())
    other = build_tiny(tmp_path / "other", "qwen3_moe" if plan.base.family == "gpt_oss" else "gpt_oss")
    with pytest.raises(ValueError, match="made for another model"):
        load_from_plan(plan, base=other)
    wrong_seed = build_tiny(tmp_path / "reseeded", plan.base.family, seed=1)  # same shapes, other weights
    with pytest.raises(ValueError, match="not the checkpoint the plan was made for"):
        load_from_plan(plan, base=wrong_seed)


def test_a_tampered_or_missing_base_is_refused(base_and_copy, tmp_path, monkeypatch):
    base, plan, _ = base_and_copy
    monkeypatch.setattr(file_hashes, "RACY_S", 0)  # the base was just written: kept at once all the same
    check_base_files(base, plan.base.files, cache=tmp_path / "hashes.json")
    assert json.loads((tmp_path / "hashes.json").read_text())  # remembered
    shard = next(iter(plan.base.files))
    data = bytearray((base / shard).read_bytes())
    data[-1] ^= 0xFF
    (base / shard).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{shard} has sha256 .* the plan expects"):
        check_base_files(base, plan.base.files, cache=tmp_path / "hashes.json")
    (base / shard).unlink()
    with pytest.raises(ValueError, match=rf"{shard} is missing"):
        check_base_files(base, plan.base.files)


def test_hashes_are_remembered_after_a_refusal_and_a_broken_cache_is_ignored(base_and_copy, tmp_path, monkeypatch):
    """A supervisor checks a tampered base again at every restart: the second check hashes nothing."""
    base, plan, _ = base_and_copy
    cache = tmp_path / "hashes.json"
    shard = next(n for n in plan.base.files if n.endswith(".safetensors"))
    data = bytearray((base / shard).read_bytes())
    data[0] ^= 0x01
    (base / shard).write_bytes(bytes(data))
    hashed = []
    real = file_hashes.file_sha256
    monkeypatch.setattr(file_hashes, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    monkeypatch.setattr(file_hashes, "RACY_S", 0)  # the shard was just written: kept at once all the same
    for _ in range(2):
        with pytest.raises(ValueError, match=rf"{shard} has sha256 .* the plan expects"):
            check_base_files(base, plan.base.files, cache=cache)
    assert sorted(hashed) == sorted(plan.base.files)  # each file once, over both checks
    cache.write_text("{ half-written")
    with pytest.raises(ValueError, match=rf"{shard} has sha256 .* the plan expects"):
        check_base_files(base, plan.base.files, cache=cache)
    assert len(hashed) == 2 * len(plan.base.files)  # hashed afresh, not a JSON error


def test_vllm_serves_a_plan_view_like_the_sliced_copy(base_and_copy, tmp_path):
    base, plan, copy = base_and_copy
    view = view_of_plan(plan, tmp_path / "views")
    assert view_of_plan(plan, tmp_path / "views") == view  # cached by the plan's hash
    assert not list(view.glob("*.safetensors"))[0].resolve().is_relative_to(view.resolve()), "links, not copies"
    assert sum(f.stat().st_size for f in view.iterdir() if not f.is_symlink()) < 64_000
    with vllm_engine(copy) as llm:
        expected = vllm_greedy(llm, PROMPTS, max_new_tokens=10)
    with vllm_engine(view) as llm:
        got = vllm_greedy(llm, PROMPTS, max_new_tokens=10)
    assert got == expected


def test_bytes_and_parameters_are_the_sliced_copys(base_and_copy, tmp_path):
    from moe_specialists.models.plan_loading import kept_weight_stats
    from moe_specialists.models.registry.entries import weight_stats
    from moe_specialists.models.registry.store import Registry

    base, plan, copy = base_and_copy
    assert kept_weight_stats(base, _kept(plan)) == weight_stats(copy)
    plan_file = tmp_path / "plan.json"
    plan.save(plan_file)
    registry = Registry(tmp_path / "registry")
    as_plan = registry.register_plan("as-plan", plan_file, directions=["en-de"])
    as_copy = registry.register_dir("as-copy", copy, directions=["en-de"])
    assert (as_plan.weight_bytes, as_plan.parameters) == (as_copy.weight_bytes, as_copy.parameters)
    assert as_plan.base_weight_bytes == as_copy.base_weight_bytes and as_plan.bytes_saved == as_copy.bytes_saved
    assert Path(as_plan.path).parent == tmp_path / "registry" / "views"
    assert sum(f.stat().st_size for f in Path(as_plan.path).iterdir() if not f.is_symlink()) < 64_000


@pytest.fixture(scope="module")
def mxfp4_base_and_copy(tmp_path_factory):
    from tests.released import save_released_gpt_oss

    work = tmp_path_factory.mktemp("mxfp4-plan")
    base = save_released_gpt_oss(work / "base")
    plan = plan_from_kept(base, [[0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7], list(range(12)), [3, 4, 5, 6, 9]])
    return base, plan, apply_plan(plan, work / "copy")


def test_mxfp4_from_plan_equals_the_sliced_copy(mxfp4_base_and_copy):
    """The released gpt-oss layout (MXFP4 experts): loaded from the base and the plan, dequantized by the same
    policy as the sliced copy, every tensor equal and every parameter in the requested dtype."""
    from moe_specialists.models.pruned import load_causal_lm

    _, plan, copy = mxfp4_base_and_copy
    want = load_causal_lm(copy, "float32", "cpu").state_dict()
    got = load_from_plan(plan, dtype="float32").state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert {v.dtype for v in got.values() if v.is_floating_point()} == {torch.float32}


def test_vllm_serves_an_mxfp4_plan_view_like_the_sliced_copy(mxfp4_base_and_copy, tmp_path):
    require_vllm_mxfp4()
    _, plan, copy = mxfp4_base_and_copy
    view = view_of_plan(plan, tmp_path / "views")
    with vllm_engine(copy, dtype="bfloat16") as llm:  # vLLM's MXFP4 backend runs in bf16
        expected = vllm_greedy(llm, PROMPTS, max_new_tokens=8)
    with vllm_engine(view, dtype="bfloat16") as llm:
        got = vllm_greedy(llm, PROMPTS, max_new_tokens=8)
    assert got == expected
