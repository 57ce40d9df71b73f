"""Recovery tuning on tiny random models: masked labels by hand, the loss counts translation tokens only,
SFT lowers it, both families keep their per-layer expert counts and reload, lineage is recorded, the
distillation data has one target per passage with languages partitioned round-robin."""

import gzip
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.cli import app
from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.file_hashes import file_sha256
from moe_specialists.models.plan import Plan, plan_from_kept
from moe_specialists.models.pruned import load_causal_lm
from moe_specialists.models.registry.entries import entry_from_dir
from moe_specialists.pruning.distill import distillation_pairs, partition_languages
from moe_specialists.pruning.pairs import (
    Pair,
    pairs_fingerprint,
    read_pairs,
    read_passages,
    with_reversed,
    write_pairs,
)
from moe_specialists.pruning.recover import RecoveryConfig, checkpoint_dtype, recover
from moe_specialists.pruning.trainer import TranslationCollator, encode_pair
from tests.tiny import save_tiny, tiny_tokenizer

# Written for these tests (not from any data set).
PAIRS = [
    Pair("en", "de", "Good morning.", "Guten Morgen."),
    Pair("en", "de", "The cat sleeps.", "Die Katze schläft."),
    Pair("en", "fr", "Thank you.", "Merci."),
    Pair("en", "fr", "The sun is hot.", "Le soleil est chaud."),
]
KEPT = [list(range(16)), [0, 3, 5, 7, 9, 11], [1, 2, 4, 6, 8, 10, 12], [2, 5, 8, 11]]  # 16, 6, 7, 4 experts


@pytest.fixture(scope="module")
def specialists(tmp_path_factory):
    """A non-uniform tiny specialist of each family."""
    root = tmp_path_factory.mktemp("specialists")
    out = {}
    for family in ("qwen3_moe", "gpt_oss"):
        base = save_tiny(family, root / f"{family}-base")
        out[family] = apply_plan(plan_from_kept(base, KEPT), root / f"{family}-spec")
    return out


def collate(examples, pad_id):
    return TranslationCollator(pad_id)(examples)


def translation_loss(model, batch):
    """What recovery trains on: the model's own loss over the collated labels (transformers shifts them)."""
    return model(**batch).loss


def test_labels_mask_the_prompt_by_hand():
    tok = tiny_tokenizer()
    ids, labels = encode_pair(tok, Pair("en", "de", "Hi", "Ja"))
    prompt = "<|user|>Translate this passage from English to German.\n\nHi<|assistant|>"
    # the byte tokenizer: one token per byte, one per special token
    n_prompt = 2 + len("Translate this passage from English to German.\n\nHi")
    assert tok.decode(ids[:n_prompt]) == prompt
    assert labels == [-100] * n_prompt + tok.convert_tokens_to_ids(["J", "a"]) + [tok.eos_token_id]
    assert ids[n_prompt:] == labels[n_prompt:]


def test_loss_counts_translation_tokens_only(specialists):
    tok = tiny_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(specialists["qwen3_moe"], dtype=torch.float32).eval()
    short, long = encode_pair(tok, Pair("en", "de", "Hi", "Ja")), encode_pair(tok, PAIRS[1])
    batch = collate([short, long], tok.pad_token_id)
    assert batch["attention_mask"][0].sum() == len(short[0]) and (batch["labels"][0, len(short[0]) :] == -100).all()
    with torch.no_grad():
        loss = translation_loss(model, batch)
        # by hand on the first sequence: positions n-1, n, n+1 predict "J", "a", <eos>
        logits = model(input_ids=torch.tensor([short[0]])).logits[0]
        n = short[1].count(-100)
        targets = torch.tensor(short[0][n:])
        by_hand = F.cross_entropy(logits[n - 1 : len(short[0]) - 1], targets)
        alone = translation_loss(model, collate([short], tok.pad_token_id))
        assert len(targets) == 3
        assert torch.allclose(alone, by_hand, atol=1e-5)
        # the batch mean is over the translation tokens of both sequences (prompt and padding excluded)
        long_alone = translation_loss(model, collate([long], tok.pad_token_id))
        n_short, n_long = len(targets), sum(y != -100 for y in long[1][1:])
        assert torch.allclose(loss, (alone * n_short + long_alone * n_long) / (n_short + n_long), atol=1e-5)
        # a label set to -100 (here the eos) removes exactly that term
        labels = [*short[1][:-1], -100]
        two = translation_loss(model, collate([(short[0], labels)], tok.pad_token_id))
        assert torch.allclose(two, F.cross_entropy(logits[n - 1 : n + 1], targets[:2]), atol=1e-5)


def test_sft_lowers_the_translation_loss(specialists, tmp_path):
    data = write_pairs(PAIRS, tmp_path / "pairs.jsonl")
    tok = tiny_tokenizer()
    batch = collate([encode_pair(tok, p) for p in PAIRS], tok.pad_token_id)

    def loss_of(folder):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            return translation_loss(model, batch).item()

    out = recover(
        RecoveryConfig(
            specialist=specialists["qwen3_moe"],
            out=tmp_path / "rec",
            data=data,
            steps=8,
            lr=3e-3,
            batch_size=4,
            log_every=0,
        )
    )
    before, after = loss_of(specialists["qwen3_moe"]), loss_of(out)
    assert after < 0.75 * before, (before, after)
    recovery = Plan.load(out / "plan.json").lineage["recovery"]
    assert recovery["loss_last"] < recovery["loss_first"]


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_recovered_specialist_keeps_counts_reloads_and_records_lineage(specialists, tmp_path, family):
    spec = specialists[family]
    data = write_pairs(PAIRS[:2], tmp_path / "pairs.jsonl")
    job = RecoveryConfig(
        specialist=spec, out=tmp_path / "rec", data=data, steps=2, lr=1e-3, batch_size=2, seed=3, log_every=0
    )
    out = recover(job)

    config = json.loads((out / "config.json").read_text())
    adapter = adapter_for(config)
    assert config["num_experts_per_layer"] == [16, 6, 7, 4]
    assert config["architectures"] == [adapter.pruned_architecture] and config["model_type"] == family
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    before = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
    assert type(model).__name__ == adapter.pruned_architecture
    for layer, kept in enumerate(KEPT):
        assert adapter.router(model, layer).weight.shape[0] == len(kept)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in before.parameters())
    changed = {
        n for (n, p), q in zip(model.named_parameters(), before.parameters(), strict=True) if not torch.equal(p, q)
    }
    assert any("router" in n or "mlp.gate" in n for n in changed) and any("experts" in n for n in changed)
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()

    plan, parent = Plan.load(out / "plan.json"), Plan.load(spec / "plan.json")
    assert plan.kept == parent.kept and plan.base == parent.base
    assert plan.lineage["parent_plan"]["sha256"] == file_sha256(spec / "plan.json")
    rec = plan.lineage["recovery"]
    assert rec["mode"] == "sft" and rec["steps"] == 2 and rec["lr"] == 1e-3 and rec["seed"] == 3
    assert rec["data_fingerprint"] == pairs_fingerprint(PAIRS[:2]) and rec["pairs"] == 2
    assert rec["config"] == job.model_dump(mode="json") and rec["config"]["specialist"] == str(spec)
    entry = entry_from_dir("recovered", out)  # registrable like any specialist
    assert entry.experts_per_layer == [16, 6, 7, 4] and entry.plan == str((out / "plan.json").resolve())


def test_languages_are_partitioned_round_robin():
    passages = [f"passage {i}" for i in range(7)]
    jobs = partition_languages(passages, ["de", "ja", "ru"])
    assert [p for _, p in jobs] == passages  # every passage once, in order
    assert [lang for lang, _ in jobs] == ["de", "ja", "ru", "de", "ja", "ru", "de"]
    with pytest.raises(ValueError):
        partition_languages(passages, [])


def test_distillation_data_from_a_tiny_parent(specialists, tmp_path):
    parent = specialists["qwen3_moe"].parent / "qwen3_moe-base"
    passages = ["Good morning.", "The cat sleeps.", "Thank you.", "The sun is hot.", "See you."]
    pairs, finished, backend = distillation_pairs(
        parent, passages, ["de", "fr"], backend="transformers", max_new_tokens=6
    )
    assert backend == "transformers" and len(pairs) == len(finished) == len(passages)
    assert [p.src for p in pairs] == passages and all(p.source == "en" for p in pairs)
    assert [p.target for p in pairs] == ["de", "fr", "de", "fr", "de"]
    assert all(isinstance(p.tgt, str) and len(p.tgt.encode()) <= 6 * 4 for p in pairs)

    # the whole job: targets learnt by the specialist, recorded in the lineage
    text = tmp_path / "passages.txt"
    text.write_text("\n".join(passages) + "\n")
    out = recover(RecoveryConfig(
        specialist=specialists["qwen3_moe"], out=tmp_path / "rec", mode="distill", data=text, parent=parent,
        languages=["de", "fr"], backend="transformers", max_new_tokens=6, keep_unfinished=True,
        steps=1, batch_size=2, log_every=0, save_data=tmp_path / "distilled.jsonl",
    ))  # fmt: skip
    rec = Plan.load(out / "plan.json").lineage["recovery"]
    assert rec["mode"] == "distill" and rec["distillation"]["backend"] == "transformers"
    assert rec["distillation"]["passages"] == 5 and rec["distillation"]["parent"] == str(parent)
    saved = read_pairs(tmp_path / "distilled.jsonl")
    assert rec["data_fingerprint"] == pairs_fingerprint(saved) and [p.target for p in saved[:2]] == ["de", "fr"]

    # another specialist learns the same translations without asking the parent again, also reversed
    again = recover(RecoveryConfig(
        specialist=specialists["gpt_oss"], out=tmp_path / "again", mode="distill",
        distilled=tmp_path / "distilled.jsonl", languages=["de", "fr"], direction="both", steps=1, batch_size=2,
        log_every=0,
    ))  # fmt: skip
    reused = Plan.load(again / "plan.json").lineage["recovery"]
    assert reused["mode"] == "distill" and reused["direction"] == "both" and reused["pairs"] == 10
    assert reused["data_fingerprint"] == pairs_fingerprint(with_reversed(saved, "both"))
    assert reused["distillation"]["generated"] == "earlier"
    with pytest.raises(ValueError, match="mode 'distill'"):
        recover(
            RecoveryConfig(
                specialist=specialists["gpt_oss"], out=tmp_path / "x", distilled=tmp_path / "distilled.jsonl", steps=1
            )
        )


def test_with_reversed():
    pairs = PAIRS[:2]
    back = [
        Pair("de", "en", "Guten Morgen.", "Good morning."),
        Pair("de", "en", "Die Katze schläft.", "The cat sleeps."),
    ]
    assert with_reversed(pairs, "to") == pairs
    assert with_reversed(pairs, "from") == back
    assert with_reversed(pairs, "both") == pairs + back


def test_checkpoint_dtype():
    assert checkpoint_dtype({"dtype": "bfloat16"}) == "bfloat16"
    assert checkpoint_dtype({"torch_dtype": "float16"}) == "float16"  # transformers 4 configs
    assert checkpoint_dtype({"dtype": "auto"}) is None and checkpoint_dtype({}) is None


def test_trained_in_float32_saved_in_the_specialists_dtype_with_either_kernel(tmp_path):
    base = save_tiny("qwen3_moe", tmp_path / "base", dtype=torch.bfloat16)
    spec = apply_plan(plan_from_kept(base, KEPT), tmp_path / "spec")
    data = write_pairs(PAIRS, tmp_path / "pairs.jsonl")
    runs = {}
    for kernel in (None, "grouped_mm"):
        out = recover(RecoveryConfig(specialist=spec, out=tmp_path / f"rec-{kernel}", data=data, steps=3, lr=1e-3,
                                     batch_size=2, log_every=0, experts_implementation=kernel))  # fmt: skip
        runs[kernel] = Plan.load(out / "plan.json").lineage["recovery"]
        weights = {k: v for f in out.glob("*.safetensors") for k, v in load_file(f).items()}
        assert weights and {v.dtype for v in weights.values()} == {torch.bfloat16}
        assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    eager, fast = runs[None], runs["grouped_mm"]
    assert (eager["dtype"], eager["saved_dtype"]) == ("float32", "bfloat16")
    assert (eager["experts_implementation"], fast["experts_implementation"]) == ("eager", "grouped_mm")
    assert fast["loss_first"] == pytest.approx(eager["loss_first"], rel=1e-4)
    assert fast["loss_last"] == pytest.approx(eager["loss_last"], rel=1e-3)


def test_read_pairs_formats(tmp_path, sample_dir):
    rows = [
        {"lang": "de", "en": "One dog.", "xx": "Ein Hund.", "source": "made_up"},
        {"lang": "de", "en": "A man.", "xx": "Eine Frau.", "source": "multi30k_task2_test"},  # not a translation
        {"lang": "fr", "en": "One cat.", "xx": "Un chat.", "source": "made_up"},
    ]
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert read_pairs(path, ["de"]) == [Pair("en", "de", "One dog.", "Ein Hund.")]
    assert read_pairs(path, direction="from") == [
        Pair("de", "en", "Ein Hund.", "One dog."),
        Pair("fr", "en", "Un chat.", "One cat."),
    ]
    assert len(read_pairs(path, ["de", "fr"], direction="both")) == 4
    assert read_passages(path) == ["One dog.", "One cat."]
    zipped = write_pairs(PAIRS, tmp_path / "pairs.jsonl.gz")  # written gzipped, read back
    with gzip.open(zipped, "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert first == {"source": "en", "target": "de", "src": "Good morning.", "tgt": "Guten Morgen."}
    assert read_pairs(zipped) == PAIRS
    flores = read_pairs(sample_dir, ["de", "fr"], limit=3)
    assert [(p.source, p.target) for p in flores] == [("en", "de")] * 3 + [("en", "fr")] * 3
    assert len(read_passages(sample_dir, limit=4)) == 4
    with pytest.raises(ValueError, match="source, target, src, tgt"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "x"}\n')
        read_pairs(bad)


def test_cli_recover(specialists, tmp_path):
    data = write_pairs(PAIRS[:2], tmp_path / "pairs.jsonl")
    runner = CliRunner()
    assert "distill" in runner.invoke(app, ["recover", "--help"]).output
    args = ["recover", str(specialists["qwen3_moe"]), "--out", str(tmp_path / "rec"), "--data", str(data)]
    r = runner.invoke(app, [*args, "--steps", "1", "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.rindex('{"specialist"') :].splitlines()[0])  # after progress bars
    assert summary["experts_per_layer"] == [16, 6, 7, 4] and summary["steps"] == 1
    r = runner.invoke(app, [*args, "--steps", "1"])  # the folder exists now
    assert r.exit_code == 2 and "exists" in r.output


@pytest.fixture(scope="module")
def mxfp4_specialist(tmp_path_factory):
    from tests.released import save_released_gpt_oss

    work = tmp_path_factory.mktemp("mxfp4")
    base = save_released_gpt_oss(work / "base")
    return apply_plan(plan_from_kept(base, [list(range(8))] * 4), work / "spec")


def _weight_bytes(folder):
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def test_a_recovered_mxfp4_specialist_keeps_every_tensor_in_mxfp4(mxfp4_specialist, tmp_path):
    """The bug this guards: transformers' save of the dequantized model wrote only biases and routers."""
    from moe_specialists.models.checkpoint import check_same_tensors, read_header, shard_files

    data = write_pairs(PAIRS, tmp_path / "pairs.jsonl")
    config = dict(specialist=mxfp4_specialist, data=data, steps=2, batch_size=4, lr=1e-3, log_every=0)
    mx = recover(RecoveryConfig(out=tmp_path / "mx", **config))
    check_same_tensors(mx, mxfp4_specialist)  # every name and shape of the input, MXFP4 blocks included
    assert json.loads((mx / "config.json").read_text())["quantization_config"]["quant_method"] == "mxfp4"
    assert _weight_bytes(mx) < 1.1 * _weight_bytes(mxfp4_specialist)
    plain = recover(RecoveryConfig(out=tmp_path / "bf16", save_dtype="bfloat16", **config))
    assert "quantization_config" not in json.loads((plain / "config.json").read_text())
    names = {k for f in shard_files(plain) for k in read_header(f)}
    assert "model.layers.0.mlp.experts.gate_up_proj" in names and not any(k.endswith("_blocks") for k in names)
    a = load_causal_lm(mx, "float32", "cpu").state_dict()
    b = load_causal_lm(plain, "float32", "cpu").state_dict()
    key = "model.layers.0.mlp.experts.gate_up_proj"
    step = b[key].abs().max().item() / 6 * 2  # at most one FP4 grid step (e2m1 max 6) of the block scale apart
    assert (a[key] - b[key]).abs().max().item() <= step


def test_a_checkpoint_missing_expert_matrices_is_refused(mxfp4_specialist, tmp_path):
    from safetensors.torch import save_file

    from moe_specialists.models.checkpoint import check_same_tensors

    broken = tmp_path / "broken"
    broken.mkdir()
    tensors = {}
    for f in mxfp4_specialist.glob("*.safetensors"):
        tensors.update(load_file(f))
    save_file({k: v for k, v in tensors.items() if "_blocks" not in k}, broken / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['model.layers.0.mlp.experts.down_proj_blocks'"):
        check_same_tensors(broken, mxfp4_specialist)


def test_the_cli_refuses_what_cannot_fit_or_launch_before_loading(specialists, tmp_path):
    """The memory plan is checked against the declared memory, and impossible launches are refused, before any
    model loads (with the numbers and how to fix it)."""
    data = write_pairs(PAIRS, tmp_path / "pairs.jsonl")
    args = ["recover", str(specialists["qwen3_moe"]), "--out", str(tmp_path / "rec"), "--data", str(data)]
    runner = CliRunner()
    r = runner.invoke(app, [*args, "--memory-per-process-gib", "0.001"])
    assert r.exit_code == 2 and "GiB per process" in r.output and "0.001 GiB were declared" in r.output
    r = runner.invoke(app, [*args, "--eval-steps", "5", "--sharding", "fsdp"])
    assert r.exit_code == 2 and "unsharded training only" in r.output
    r = runner.invoke(app, [*args, "--batch-size", "6", "--gradient-accumulation", "4"])
    assert r.exit_code == 2 and "not a multiple of processes (1) x gradient_accumulation (4)" in r.output
    r = runner.invoke(app, [*args, "--eval-steps", "2", "--data", "sample", "--eval-data", "sample", "-l", "de"])
    assert r.exit_code == 2 and "is the SFT training data" in r.output
    assert not (tmp_path / "rec").exists()
