"""Physical slicing: invariants on both families, the released MXFP4 layout, streaming, refusals."""

import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.models import apply as apply_module
from moe_specialists.models.adapters import GPT_OSS, adapter_for
from moe_specialists.models.apply import (
    TensorCopy,
    apply_plan,
    copy_ranges,
    row_ranges,
    safetensors_header,
    willneed_bytes,
)
from moe_specialists.models.checkpoint import checkpoint_summary
from moe_specialists.models.plan import Recipe
from moe_specialists.models.plan import plan_from_kept as plan_for
from moe_specialists.models.pruned import load_causal_lm
from moe_specialists.pruning.calibrate import CalibrationConfig, calibrate
from moe_specialists.pruning.collect import collect_transformers
from moe_specialists.pruning.data import CalibrationSequence
from moe_specialists.pruning.plan import make_plan
from moe_specialists.pruning.stats import RoutingStats
from tests.released import save_released_gpt_oss, save_released_qwen3_moe
from tests.tiny import save_tiny, tiny_tokenizer

FAMILIES = ["qwen3_moe", "gpt_oss"]
TEXT = "Wie spät ist es? Der Zug fährt um acht Uhr."


def logits(model_dir, text=TEXT):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tiny_tokenizer()(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_all_experts_gives_identical_logits(tmp_path, family):
    base = save_tiny(family, tmp_path / "base", max_shard_size="300KB")
    spec = apply_plan(plan_for(base, [list(range(16))] * 4), tmp_path / "spec")
    assert torch.equal(logits(base), logits(spec))


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_unselected_experts_keeps_logits_on_that_input(tmp_path, family):
    """Both families renormalise over the top-k (the tiny Qwen3 sets norm_topk_prob), so experts that no
    token of an input selects can go without changing that input's logits."""
    base = save_tiny(family, tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    assert adapter_for(model.config).renormalises(model.config)
    stats = collect_transformers(
        model, tiny_tokenizer(), [CalibrationSequence("en-de", TEXT)], reap=False, progress=False
    )
    kept = [[e for e in range(16) if row[e] > 0] for row in stats.groups["en-de"].select]
    assert all(4 <= len(k) < 16 for k in kept), kept  # something is really removed in every layer
    spec = apply_plan(plan_for(base, kept), tmp_path / "spec")
    assert torch.allclose(logits(base), logits(spec), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_uniform_plan_loads_with_planned_parameters_and_generates(tmp_path, family):
    base = save_tiny(family, tmp_path / "base", max_shard_size="300KB")
    kept = [list(range(16)), [0, 3, 5, 7, 9, 11], [1, 2, 4, 6, 8, 10, 12, 13, 14, 15, 0], [2, 5, 8, 11]]
    kept = [sorted(k) for k in kept]
    plan = plan_for(base, kept)
    spec = apply_plan(plan, tmp_path / "spec")
    config = json.loads((spec / "config.json").read_text())
    adapter = adapter_for(config)
    assert config["num_experts_per_layer"] == [16, 6, 11, 4]
    assert config["architectures"] == [adapter.pruned_architecture]
    assert adapter.num_experts(config) == 16 and config["model_type"] == family
    assert (spec / "plan.json").is_file() and (spec / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(spec)
    assert type(model).__name__ == adapter.pruned_architecture
    assert sum(p.numel() for p in model.parameters()) == plan.parameters < plan.base.parameters
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    # kept experts are the base's experts, renumbered in order
    base_model = AutoModelForCausalLM.from_pretrained(base)
    b, s = adapter.experts(base_model, 1), adapter.experts(model, 1)
    for name, p in s.named_parameters():
        assert torch.equal(p, getattr(b, name)[kept[1]])


def test_plan_for_another_model_is_refused(tmp_path):
    a = save_tiny("qwen3_moe", tmp_path / "a")
    b = save_tiny("qwen3_moe", tmp_path / "b", experts=8, top_k=2)
    with pytest.raises(ValueError, match="made for another model.*experts per layer"):
        apply_plan(plan_for(a, [list(range(8))] * 4), tmp_path / "out", base=b)
    gpt = save_tiny("gpt_oss", tmp_path / "g")
    with pytest.raises(ValueError, match="family 'qwen3_moe' vs 'gpt_oss'"):
        apply_plan(plan_for(a, [list(range(16))] * 4), tmp_path / "out", base=gpt)
    assert not (tmp_path / "out").exists()


def test_modified_or_corrupt_checkpoint_is_refused_and_leaves_nothing(tmp_path):
    base = save_tiny("qwen3_moe", tmp_path / "base")
    plan = plan_for(base, [list(range(8))] * 4)
    shard = base / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        apply_plan(plan, tmp_path / "out")
    shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(ValueError, match="corrupt or not safetensors"):
        apply_plan(plan, tmp_path / "out", verify=False)
    assert not any(p.name.startswith(".out") or p.name == "out" for p in tmp_path.iterdir())


def test_mxfp4_gpt_oss_as_released_slices_and_loads(tmp_path):
    """The released gpt-oss layout (real MXFP4 encoding, three shards): kept experts' blocks, scales and biases
    are the base's bytes, the config stays MXFP4, and the specialist loads (dequantized) with the base's
    dequantized experts, and its logits equal the base's on an input no token of which routes elsewhere."""
    base = save_released_gpt_oss(tmp_path / "mx", experts=16, layers=4)
    summary = checkpoint_summary(base)
    H, I = 128, 64  # noqa: E741, N806 (the paper's names)
    # a block byte holds two 4-bit weights; scales are not parameters. Per expert: weights 2I*H + H*I,
    # biases 2I + H, router row H + 1 bias
    assert summary["parameters_per_expert"][0] == 2 * I * H + H * I + 2 * I + H + H + 1
    kept = [[1, 4, 6, 9], [0, 2, 3, 7, 8, 15], list(range(16)), [5, 6, 7, 8, 9]]
    spec = apply_plan(plan_for(base, kept), tmp_path / "spec")
    tensors = {}
    for shard in sorted(base.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    out = {}
    for shard in sorted(spec.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    assert set(out) == set(tensors)
    for name, t in tensors.items():
        role = GPT_OSS.tensor_role(name)
        if role is None:
            assert torch.equal(out[name], t)
            continue
        k = kept[role.layer]
        assert out[name].dtype == t.dtype and torch.equal(out[name], t[k])
    assert any(n.endswith("_blocks") for n in out)
    cfg = json.loads((spec / "config.json").read_text())
    assert cfg["num_experts_per_layer"] == [4, 6, 16, 5] and cfg["num_local_experts"] == 16
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
    b, s = load_causal_lm(base, "float32"), load_causal_lm(spec, "float32")
    assert type(s).__name__ == "PrunedGptOssForCausalLM"
    for layer in range(4):
        for name, p in GPT_OSS.experts(s, layer).named_parameters():
            assert torch.equal(p, getattr(GPT_OSS.experts(b, layer), name)[kept[layer]])
    out = s.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_truncated_shard_is_refused_by_name_before_anything_is_written(tmp_path):
    base = save_released_qwen3_moe(tmp_path / "q")
    plan = plan_for(base, [list(range(8))] * 4)
    shard = sorted(base.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-5000])  # cut inside its last tensor
    with pytest.raises(ValueError, match=f"{shard.name} is truncated: tensor .* ends at byte"):
        apply_plan(plan, tmp_path / "out", verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no output, no temp folder


def test_norm_topk_prob_false_is_refused(tmp_path, sample_dir):
    """Without renormalisation the top-k weights are a softmax over all experts: slicing changes every token."""
    good = save_released_qwen3_moe(tmp_path / "q")
    plan = plan_for(good, [list(range(8))] * 4)
    bad = save_released_qwen3_moe(tmp_path / "bad", norm_topk_prob=False)
    with pytest.raises(ValueError, match="norm_topk_prob is false .* would change every token's output"):
        plan_for(bad, [list(range(8))] * 4)
    stats = calibrate(CalibrationConfig(model=bad, data_dir=sample_dir, languages=["de"],
                                        out=tmp_path / "stats.safetensors", limit=2, reap=False))
    with pytest.raises(ValueError, match="norm_topk_prob is false"):
        make_plan(RoutingStats.load(stats), Recipe(drop=8, directions=["en-de"]))
    with pytest.raises(ValueError, match="norm_topk_prob is false"):
        apply_plan(plan, tmp_path / "out", base=bad, verify=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("direction", ["bf16->mxfp4", "mxfp4->bf16"])
def test_plan_for_the_other_storage_format(tmp_path, direction):
    """Same model stored as bf16 and as MXFP4: a plan of one applied to the other is refused with the reason
    (verify), or slices the other one consistently (verify=False): its config, tensors and plan.json agree."""
    mx = save_released_gpt_oss(tmp_path / "mx", layers=2)
    dense = save_tiny("gpt_oss", tmp_path / "bf16", dtype=torch.bfloat16, layers=2)
    made_for, target = (dense, mx) if direction == "bf16->mxfp4" else (mx, dense)
    kept = [[0, 3, 5, 7, 9], [1, 2, 4, 8]]
    plan = plan_for(made_for, kept)
    with pytest.raises(ValueError, match="the same model in another storage format"):
        apply_plan(plan, tmp_path / "out", base=target)
    spec = apply_plan(plan, tmp_path / "out", base=target, verify=False)
    cfg = json.loads((spec / "config.json").read_text())
    with safe_open(next(spec.glob("*.safetensors")), "pt") as f:
        names = list(f.keys())
    blocks = any(n.endswith("_blocks") for n in names)
    assert blocks == ("quantization_config" in cfg) == (target == mx)
    recorded = json.loads((spec / "plan.json").read_text())["base"]
    assert recorded["id"] == str(target) and recorded["weight_bytes"] == checkpoint_summary(target)["weight_bytes"]
    model = load_causal_lm(spec, "float32")
    assert [GPT_OSS.router(model, i).weight.shape[0] for i in range(2)] == [5, 4]


def test_mixed_checkpoint_is_refused(tmp_path):
    mx = save_released_gpt_oss(tmp_path / "mx", layers=2)
    plan = plan_for(mx, [list(range(8))] * 2)
    config = json.loads((mx / "config.json").read_text())
    del config["quantization_config"]
    (mx / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not say quant_method mxfp4 but the tensors have MXFP4"):
        apply_plan(plan, tmp_path / "out", verify=False)


def test_row_ranges_and_header_by_hand():
    # rows 0, 1, 3 of a tensor at byte 100 with 10-byte rows: [100, 120) merged, then [130, 140)
    assert row_ranges(100, 10, [0, 1, 3]) == ((100, 20), (130, 10))
    assert row_ranges(0, 4, []) == ()
    header = safetensors_header([TensorCopy("a", "BF16", (2, 3), ((0, 12),)), TensorCopy("b", "U8", (5,), ((7, 5),))])
    n = int.from_bytes(header[:8], "little")
    assert len(header) == 8 + n and len(header) % 8 == 0
    assert json.loads(header[8:]) == {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
        "b": {"dtype": "U8", "shape": [5], "data_offsets": [12, 17]},
    }


@pytest.mark.parametrize(("linux_io", "prefetch"), [(True, 0), (True, 5), (True, 1 << 28), (False, 1 << 28)])
def test_copy_ranges_by_hand(tmp_path, monkeypatch, linux_io, prefetch):
    """Ranges with gaps, split in chunks of 4 bytes, whatever the prefetch window (none, smaller than a chunk,
    all of it) and the copy (the kernel's, or the buffered one of other systems): the bytes of the ranges in
    order, nothing else; a range past the end is refused."""
    monkeypatch.setattr(apply_module, "PREFETCH_BYTES", prefetch)
    monkeypatch.setattr(apply_module, "LINUX_IO", linux_io)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(bytes(range(40)))
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(b"H")
        fout.flush()
        copy_ranges(fin.fileno(), fout.fileno(), [(2, 3), (10, 9), (30, 1)], chunk=4)
    assert dst.read_bytes() == b"H" + bytes([2, 3, 4, *range(10, 19), 30])
    with open(src, "rb") as fin, open(dst, "wb") as fout, pytest.raises(ValueError, match="end of the base"):
        copy_ranges(fin.fileno(), fout.fileno(), [(38, 5)], chunk=4)


def test_willneed_bytes_reads_the_device_queue(tmp_path):
    """max(read_ahead_kb, max_sectors_kb) of the file's device in a sysfs-like tree: a whole disk has its
    queue/, a partition its parent's; 128 KiB where the device is unknown or says 0."""
    src = tmp_path / "src"
    src.write_bytes(b"x")
    st = src.stat()
    device = tmp_path / "sys" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    with open(src, "rb") as f:
        assert willneed_bytes(f.fileno(), tmp_path / "sys") == 128 * 1024  # no such device
        for queue in (device / "queue", device / ".." / "queue"):
            queue.mkdir(parents=True)
            (queue / "read_ahead_kb").write_text("8192\n")
            (queue / "max_sectors_kb").write_text("4096\n")
            assert willneed_bytes(f.fileno(), tmp_path / "sys") == 8 * 1024 * 1024
            (queue / "max_sectors_kb").write_text("16384\n")
            assert willneed_bytes(f.fileno(), tmp_path / "sys") == 16 * 1024 * 1024
            shutil.rmtree(queue)
        (device / "queue").mkdir()
        (device / "queue" / "read_ahead_kb").write_text("0")
        (device / "queue" / "max_sectors_kb").write_text("0")
        assert willneed_bytes(f.fileno(), tmp_path / "sys") == 128 * 1024


@pytest.mark.parametrize(("dense", "step"), [([1], 1), ([], 2)])
def test_released_qwen3_with_dense_layers(tmp_path, dense, step):
    """mlp_only_layers / decoder_sparse_step as released: dense layers are copied, MoE layers sliced; keeping
    every expert gives the base's logits, keeping fewer loads with the planned parameter count."""
    base = save_released_qwen3_moe(tmp_path / "q", mlp_only_layers=dense, decoder_sparse_step=step)
    moe = adapter_for(json.loads((base / "config.json").read_text())).moe_layers(
        json.loads((base / "config.json").read_text()))
    assert moe == ([0, 2, 3] if dense else [1, 3])
    full = apply_plan(plan_for(base, [list(range(16))] * len(moe)), tmp_path / "full")
    assert torch.equal(logits(base), logits(full))
    plan = plan_for(base, [list(range(0, 16, 2))] * len(moe))
    spec = apply_plan(plan, tmp_path / "spec")
    counts = json.loads((spec / "config.json").read_text())["num_experts_per_layer"]
    assert counts == [8 if i in moe else 0 for i in range(4)]
    model = AutoModelForCausalLM.from_pretrained(spec)
    assert sum(p.numel() for p in model.parameters()) == plan.parameters
