"""The transformers collector, against routing computed by hand / independently of the hooks."""

import math

import pytest
import torch

from moe_specialists.pruning.collect import collect_transformers, pad_batch
from moe_specialists.pruning.data import CalibrationSequence
from tests.tiny import build_model, tiny_tokenizer


def test_pad_batch_marks_padding():
    ids, mask, seq = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert seq.tolist() == [0, 0, 0, 1, -1, -1]


def _fixed_router_gpt_oss():
    """GPT-OSS, 1 layer, 4 experts, top-2, router weight 0 and bias [3, 1, 2, 0]: every token selects
    experts 0 and 2 with softmax([3, 2]) = [e/(1+e), 1/(1+e)]."""
    model = build_model("gpt_oss", experts=4, top_k=2, layers=1)
    with torch.no_grad():
        model.model.layers[0].mlp.router.weight.zero_()
        model.model.layers[0].mlp.router.bias.copy_(torch.tensor([3.0, 1.0, 2.0, 0.0]))
    return model


def test_routing_mass_frequency_reap_by_hand():
    model, tok = _fixed_router_gpt_oss(), tiny_tokenizer()
    seqs = [CalibrationSequence("en-de", "Guten Tag, Welt."), CalibrationSequence("en-de", "Hallo!")]
    # the MLP input of each token, captured independently to recompute REAP by hand
    captured = []
    h = model.model.layers[0].post_attention_layernorm.register_forward_hook(
        lambda m, a, out: captured.append(out.detach())
    )
    stats = collect_transformers(model, tok, seqs, batch_size=2, reap=True, progress=False)
    h.remove()
    g = stats.groups["en-de"]
    e = math.e
    assert g.num_sequences == 2
    assert g.mass_sum[0].tolist() == pytest.approx([2 * e / (1 + e), 0.0, 2 / (1 + e), 0.0])
    n_tokens = sum(len(tok(s.text, add_special_tokens=False)["input_ids"]) for s in seqs)
    assert g.num_tokens == n_tokens
    assert g.select[0].tolist() == [n_tokens, 0, n_tokens, 0]
    # REAP by hand: mean over tokens of w * ||f_e(h)|| with f_e the GPT-OSS expert written out here
    ex = model.model.layers[0].mlp.experts
    hidden = captured[0].reshape(-1, captured[0].shape[-1])
    lengths = [len(tok(s.text, add_special_tokens=False)["input_ids"]) for s in seqs]
    width = max(lengths)
    valid = torch.cat([torch.arange(width) < n for n in lengths])
    hv = hidden[valid].double()
    for expert, w in ((0, e / (1 + e)), (2, 1 / (1 + e))):
        gu = hv @ ex.gate_up_proj[expert].double() + ex.gate_up_proj_bias[expert].double()
        gate, up = gu[..., ::2].clamp(max=ex.limit), gu[..., 1::2].clamp(-ex.limit, ex.limit)
        out = ((up + 1) * gate * torch.sigmoid(gate * ex.alpha)) @ ex.down_proj[expert].double()
        out = out + ex.down_proj_bias[expert].double()
        expected = (w * out.norm(dim=-1)).mean().item()
        assert (g.reap_sum[0, expert] / g.select[0, expert]).item() == pytest.approx(expected, rel=1e-4)
        # the mean output: sum_t w f_e(h_t) / sum_t w, every token weighted alike here, so the plain mean
        assert g.out_weight[0, expert].item() == pytest.approx(w * n_tokens)
        assert torch.allclose(stats.mean_outputs(["en-de"])[0, expert].double(), out.mean(0), rtol=1e-4, atol=1e-6)
    assert g.out_weight[0, 1] == g.out_weight[0, 3] == 0 and not stats.mean_outputs(["en-de"])[0, [1, 3]].any()


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_hooks_match_router_and_ignore_padding(family):
    """Routing mass equals the router's own top-k weights recomputed from the layer input, and a
    sequence's statistics do not depend on the padding of its batch."""
    model, tok = build_model(family, layers=2), tiny_tokenizer()
    texts = ["A short one.", "A rather longer sentence, to force padding in the batch."]
    alone = collect_transformers(
        model, tok, [CalibrationSequence("en-de", texts[0])], batch_size=1, reap=False, progress=False
    )
    batched = collect_transformers(
        model, tok, [CalibrationSequence("en-de", t) for t in texts], batch_size=2, reap=False, progress=False
    )
    second = collect_transformers(
        model, tok, [CalibrationSequence("en-de", texts[1])], batch_size=1, reap=False, progress=False
    )
    total = alone.groups["en-de"].mass_sum + second.groups["en-de"].mass_sum
    assert torch.allclose(batched.groups["en-de"].mass_sum, total, atol=1e-5)
    assert torch.allclose(alone.groups["en-de"].mass_sum.sum(1), torch.ones(2, dtype=torch.float64))
    # recompute layer 0 routing of the first text directly from the router module
    ids = torch.tensor([tok(texts[0], add_special_tokens=False)["input_ids"]])
    captured = []
    h = model.model.layers[0].post_attention_layernorm.register_forward_hook(
        lambda m, a, out: captured.append(out.detach())
    )
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    router = model.model.layers[0].mlp.gate if family == "qwen3_moe" else model.model.layers[0].mlp.router
    _, weights, indices = router(captured[0].reshape(-1, 128))
    dense = torch.zeros(indices.shape[0], 16, dtype=torch.float64).scatter_(1, indices, weights.double())
    assert torch.allclose(alone.groups["en-de"].mass_sum[0], dense.mean(0), atol=1e-6)


def test_generated_routing_counts_every_token_the_model_reads():
    """The prompt and the greedy translation but its last token (no forward pass reads it; vLLM's collector
    records the same tokens); an unknown routing is refused naming the accepted ones."""
    from moe_specialists.models.generation import TransformersGenerator
    from moe_specialists.models.prompts import render

    model, tok = build_model("qwen3_moe", layers=2), tiny_tokenizer()
    seqs = [CalibrationSequence("en-de", "unused reference", source="en", target="de", source_text=t)
            for t in ("Hello.", "The cat sat on the mat.")]  # fmt: skip
    stats = collect_transformers(model, tok, seqs, batch_size=2, reap=False, routing="generated",
                                 max_new_tokens=4, progress=False)  # fmt: skip
    generator = TransformersGenerator(model, tok)
    prompts = [generator.encode(render(tok, "en", "de", s.source_text)) for s in seqs]
    generated = generator.generate(prompts, 4)
    assert all(g.ids for g in generated)
    g = stats.groups["en-de"]
    assert stats.header["routing"] == "generated"
    assert g.num_tokens == sum(len(p) + len(o.ids) - 1 for p, o in zip(prompts, generated, strict=True))
    with pytest.raises(ValueError, match=r"routing must be one of \['generated', 'reference'\], not 'generate'"):
        collect_transformers(model, tok, seqs, routing="generate", progress=False)
