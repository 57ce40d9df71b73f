"""Scores of the bundled tiny translator and of the generalist trained on its mixture, on the shared layers:
FLORES chrF through the ``evaluate`` job (greedy, the gateway's extraction, ``pruning.evaluate.translate_and_score``),
the model card's ``eval_results.json``, and the mixture's held-out tasks (exact match of greedy answers read with
the gateway's extractor; next-token loss on code), which also score a pruned specialist of the generalist.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from moe_specialists.models.extract import extract_answer
from moe_specialists.models.generation import TransformersGenerator
from moe_specialists.models.tiny_translator.mixture import read_jsonl
from moe_specialists.models.tiny_translator.tasks import Conversation, exact_match
from moe_specialists.pruning.evaluate import EvalResults, EvaluationConfig, evaluate

EVAL_DIRECTIONS = [f"{s}-{t}" for x in ("de", "fr", "ru", "es", "cs", "zh", "ja") for s, t in (("en", x), (x, "en"))]
TARGET_LANGS = ("de", "fr", "ru", "es", "cs")


def render_prompt(tokenizer, conversation: Conversation) -> str:
    return tokenizer.apply_chat_template(conversation.messages()[:1], tokenize=False, add_generation_prompt=True)


def evaluate_flores(model, tokenizer, folder: Path, flores: Path, lines: int, batch_size: int,
                    directions: list[str] = EVAL_DIRECTIONS) -> EvalResults:
    """The ``evaluate`` job on the saved model ``folder`` (``model`` is it, already loaded): greedy, the first
    ``lines`` FLORES devtest passages per direction, the gateway's extraction, chrF and BLEU."""
    config = EvaluationConfig(model=folder, directions=directions, data_dir=flores, split="devtest", limit=lines,
                              dtype="bfloat16", batch_size=batch_size, device=str(next(model.parameters()).device),
                              experts_implementation=model.config._experts_implementation)
    return evaluate(config, generator=TransformersGenerator(model, tokenizer, batch_size))


def card_results(results: EvalResults, command: str) -> dict[str, Any]:
    """The model card's ``eval_results.json``: chrF per direction and how it was scored."""
    return {
        "flores_devtest_lines": results.limit,
        "decoding": f"greedy, {results.backend}, {results.config.get('dtype')} weights; at most min("
                    f"{results.max_new_tokens}, 2 x source tokens + 16) new tokens (pruning.evaluate)",
        "extraction": "the gateway's: models.extract.extract_answer on the output decoded with special tokens; "
                      "degenerate outputs (template residue, empty, loops: pruning.quality.classify) scored as "
                      "empty hypotheses",
        "command": command,
        "chrf": {d: round(r.chrf, 2) for d, r in results.directions.items()},
    }


def average(chrf: dict[str, float]) -> float | None:
    """Mean chrF over en<->{de,fr,ru,es,cs} (the directions present)."""
    main = [chrf[f"{a}-{b}"] for x in TARGET_LANGS for a, b in (("en", x), (x, "en")) if f"{a}-{b}" in chrf]
    return statistics.fmean(main) if main else None


@torch.no_grad()
def code_loss(model, tokenizer, conversations: list[Conversation], batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over the answer tokens (and eos) of ``conversations``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        full = tokenizer([tokenizer.apply_chat_template(c.messages(), tokenize=False) for c in chunk],
                         add_special_tokens=False)["input_ids"]
        plens = [len(tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"]) for c in chunk]
        width = max(map(len, full))
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in full], device=device)
        labels = torch.full_like(ids, -100)
        for i, (x, p) in enumerate(zip(full, plens, strict=True)):
            labels[i, p : len(x)] = ids[i, p : len(x)]
        lengths = torch.tensor([len(x) for x in full], device=device)
        logits = model(input_ids=ids, attention_mask=torch.arange(width, device=device) < lengths[:, None]).logits
        loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
        total, count = total + loss.item(), count + int((labels[:, 1:] != -100).sum())
    return total / max(count, 1)


def evaluate_tasks(model, tokenizer, heldout: Path, batch_size: int = 64) -> dict[str, float]:
    """Non-translation scores on the mixture's held-out set: exact match of greedy answers (through the one
    generation layer and the gateway's extractor; at most 2 x prompt tokens + 16 new tokens) on arithmetic and
    lists, and next-token loss on code. Translation specialists should lose these while chrF holds."""
    model.eval()
    rows = list(read_jsonl(heldout))
    generator = TransformersGenerator(model, tokenizer, batch_size)
    scores: dict[str, float] = {}
    for task in ("arithmetic", "lists"):
        if chunk := [c for c in rows if c.task == task]:
            prompts = [generator.encode(render_prompt(tokenizer, c)) for c in chunk]
            outputs = generator.generate(prompts, [min(256, 2 * len(p) + 16) for p in prompts])
            answers = [extract_answer(g.text, generator.end_markers)[0] for g in outputs]
            scores[f"{task}_exact_match"] = round(exact_match(answers, [c.assistant for c in chunk]), 4)
    if code := [c for c in rows if c.task == "code"]:
        scores["code_loss"] = round(code_loss(model, tokenizer, code), 4)
    return scores
