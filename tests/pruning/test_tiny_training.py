"""The bundled translator's training job on transformers' Trainer: batches cut at the token budget by hand, the
loss by hand, a toy trained on the generalist mixture for a few steps on the CPU (the loss falls) and scored
through the shared generation layer, the time budget, the card's results."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, TrainerControl, TrainerState
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR
from moe_specialists.models.tiny_translator.mixture import MixtureConfig, build_mixture, conversations
from moe_specialists.pruning import tiny_training as training
from moe_specialists.pruning.evaluate import EvalResults, PairResult
from moe_specialists.pruning.tiny_scores import average, card_results, code_loss, evaluate_tasks, render_prompt

pytestmark = pytest.mark.slow  # make test-fast skips it: the bundled translator's training recipe end to end


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(BUNDLED_MODEL_DIR)


def test_batches_are_cut_at_the_token_budget_by_hand():
    lengths = np.array([5, 3, 8, 3, 4])
    batches = training.make_batches(lengths, 10, np.random.default_rng(0))
    # sorted lengths 3 3 4 5 8: [3, 3, 4] costs 3 x 4 = 12 > 10, so [3, 3] (6), [4, 5] (2 x 5), [8]
    assert sorted(sorted(lengths[b].tolist()) for b in batches) == [[3, 3], [4, 5], [8]]
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert [len(b) for b in training.make_batches(np.array([12, 2]), 10, np.random.default_rng(0))] == [1, 1]
    sampler = training.TokenBudgetBatches(lengths, 10, seed=0)
    first, second = list(sampler), list(sampler)
    assert len(sampler) == 3 and len(first) == len(second) == 3 and first != second  # a new shuffle per epoch
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_examples_label_the_answer_only():
    examples = training.Examples(tokens=np.array([7, 8, 9, 1, 2, 3], dtype=np.int32), starts=np.array([0, 3]),
                                 lengths=np.array([3, 3]), prompt_lengths=np.array([2, 1]))
    assert examples[0] == ([7, 8, 9], [-100, -100, 9])
    assert examples[1] == ([1, 2, 3], [-100, 2, 3])


def test_loss_is_smoothed_cross_entropy_on_labels_plus_the_models_aux_loss():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    labels = torch.tensor([[-100, 1, -100]])  # one target: token 1 after position 0
    outputs = MoeCausalLMOutputWithPast(logits=logits, aux_loss=torch.tensor(4.0))
    loss = training.TranslationLoss(label_smoothing=0.0, aux_coef=0.01)
    # -log softmax([2, 0])[1] = log(1 + e^2) = 2.126928; + 0.01 x 4
    assert loss(outputs, labels).item() == pytest.approx(2.126928 + 0.04, abs=1e-5)
    # smoothing 0.1 over 2 classes: 0.9 x 2.126928 + 0.1 x mean(0.126928, 2.126928) = 2.026928
    smoothed = training.TranslationLoss(label_smoothing=0.1, aux_coef=0.0)
    assert smoothed(outputs, labels).item() == pytest.approx(2.026928, abs=1e-5)
    assert loss.pop_aux() == pytest.approx(4.0) and loss.pop_aux() is None


def test_time_budget_stops_training():
    budget, control = training.TimeBudget(0.0), TrainerControl()
    budget.on_train_begin(None, TrainerState(), control)
    budget.on_step_end(None, TrainerState(global_step=3), control)
    assert control.should_training_stop
    patient, control = training.TimeBudget(3600.0), TrainerControl()
    patient.on_train_begin(None, TrainerState(), control)
    patient.on_step_end(None, TrainerState(global_step=3), control)
    assert not control.should_training_stop


def toy_args(mixture, **changes) -> argparse.Namespace:
    args = training.parser().parse_args(["--mixture", str(mixture), "--out", str(mixture / "out")])
    toy = dict(device="cpu", hidden_size=128, layers=2, experts=8, steps=16, tokens_per_batch=4096, lr=3e-3,
               warmup=2, weight_decay=0.0, label_smoothing=0.0, log_every=1)
    return argparse.Namespace(**(vars(args) | toy | changes))


def test_a_toy_trains_on_the_mixture_and_is_scored(tmp_path, sample_pairs, tokenizer):
    build_mixture(MixtureConfig(pairs=sample_pairs, out=tmp_path, examples=600, heldout=8, seed=0))
    torch.set_num_threads(1)
    model, losses = training.train(toy_args(tmp_path))
    assert model.config._experts_implementation == "grouped_mm"  # transformers' grouped-GEMM experts
    assert len(losses) == 16 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 1.0, losses
    scores = evaluate_tasks(model, tokenizer, tmp_path / "heldout.jsonl.gz")
    assert set(scores) == {"arithmetic_exact_match", "lists_exact_match", "code_loss"}
    assert 0 <= scores["arithmetic_exact_match"] <= 1 and 0 < scores["code_loss"] < 20
    training.save(model, tokenizer, tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["dtype"] == "bfloat16" and saved["output_router_logits"] is False and saved["num_local_experts"] == 8


def test_time_budget_cuts_a_run_short(tmp_path, sample_pairs):
    build_mixture(MixtureConfig(pairs=sample_pairs, out=tmp_path, examples=200, heldout=0, seed=0,
                                shares={"translation": 1.0}))
    _, losses = training.train(toy_args(tmp_path, time_budget=0.0, experts_implementation="eager"))
    assert len(losses) == 1  # stopped after the first step


def test_code_loss_ignores_padding_and_prompts(sample_pairs, tmp_path, tokenizer):
    """Batched (padded) code loss == the token-weighted mean of each conversation's loss computed alone."""
    model = training.Qwen3MoeForCausalLM(training.model_config(
        len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id,
        {"hidden_size": 128, "num_hidden_layers": 1, "num_experts": 4})).eval()
    rows = [c for c in conversations(MixtureConfig(pairs=sample_pairs, out=tmp_path, examples=20, heldout=3))[1]
            if c.task == "code"][:3]
    batched = code_loss(model, tokenizer, rows, batch_size=3)
    total = count = 0.0
    for c in rows:
        ids = tokenizer(tokenizer.apply_chat_template(c.messages(), tokenize=False), add_special_tokens=False,
                        return_tensors="pt").input_ids
        p = len(tokenizer(render_prompt(tokenizer, c), add_special_tokens=False).input_ids)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, p - 1 : -1]
        total += torch.nn.functional.cross_entropy(logits.float(), ids[0, p:], reduction="sum").item()
        count += ids.shape[1] - p
    assert batched == pytest.approx(total / count, rel=1e-4)


def test_card_results_and_average():
    def row(direction, chrf):
        return PairResult(direction=direction, n=2, chrf=chrf, chrf_std=0, bleu=0, bleu_std=0, degenerate_rate=0,
                          seeds=[], seconds=0)

    results = EvalResults(model="m", backend="vllm", split="devtest", limit=200, temperature=0, max_new_tokens=256,
                          config={"dtype": "bfloat16"},
                          directions={"en-de": row("en-de", 38.123), "de-en": row("de-en", 36.0),
                                      "en-zh": row("en-zh", 9.0)})
    card = card_results(results, "moe-specialists evaluate ...")
    assert card["chrf"] == {"en-de": 38.12, "de-en": 36.0, "en-zh": 9.0} and card["flores_devtest_lines"] == 200
    assert "vllm" in card["decoding"] and "extract_answer" in card["extraction"]
    assert average(card["chrf"]) == pytest.approx((38.12 + 36.0) / 2)  # en-zh is not in the average
