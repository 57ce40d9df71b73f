"""The translation prompt, shared by calibration, training, evaluation and the gateway, and its inverse: the
answer span of what a model generates after it.

One instruction ("Translate this passage from S to T.") rendered through the tokenizer's chat template, so
each family gets its own format (GPT-OSS harmony, Qwen3 ChatML, the bundled translator's template).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from moe_specialists.models.languages import language_name

__all__ = ["DATA_LANGUAGES", "LANGUAGE_NAMES", "answer_span", "instruction", "language_name", "render",
           "translation_messages"]

HARMONY_FINAL = "<|channel|>final<|message|>"
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)

# The languages whose prompts the bundled translator's tokenizer was trained on (its training pairs and the FLORES
# languages measured with it). Names come from CLDR (``models.languages``); any code langcodes knows is accepted.
DATA_LANGUAGES = ("en", "de", "fr", "cs", "ru", "es", "zh", "ja", "bn", "arz")
LANGUAGE_NAMES: dict[str, str] = {code: language_name(code) for code in DATA_LANGUAGES}



def instruction(source: str, target: str, text: str) -> str:
    """The user turn: 'Translate this passage from <S> to <T>.' then the passage."""
    return f"Translate this passage from {language_name(source)} to {language_name(target)}.\n\n{text}"


def translation_messages(source: str, target: str, text: str, translation: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": instruction(source, target, text)}]
    if translation is not None:
        messages.append({"role": "assistant", "content": translation})
    return messages


def render(tokenizer: Any, source: str, target: str, text: str, translation: str | None = None) -> str:
    """Prompt text (``translation is None``: ends where the model starts translating) or the whole
    conversation (instruction + passage + translation) used as a calibration or training sequence."""
    messages = translation_messages(source, target, text, translation)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=translation is None)
    # No chat template (a raw base model): a plain completion prompt.
    prompt = f"{messages[0]['content']}\n\n{language_name(target)}:"
    if translation is None:
        return prompt
    eos = getattr(tokenizer, "eos_token", None) or ""
    return f"{prompt} {translation}{eos}"


def answer_span(raw: str, end_markers: Iterable[str]) -> tuple[str, bool]:
    """(answer, unfinished) of generated text decoded WITH special tokens: GPT-OSS harmony output keeps its
    ``final`` channel only, ``<think>...</think>`` blocks are dropped, and the text ends at the first end marker.
    ``unfinished``: the model stopped while reasoning (harmony output without a final channel gives "", an
    unclosed ``<think>`` the text before it)."""
    text = raw
    if HARMONY_FINAL in text:
        text = text[text.rindex(HARMONY_FINAL) + len(HARMONY_FINAL) :]
    elif "<|channel|>" in text:
        return "", True
    text = _THINK.sub("", text)
    unfinished = "<think>" in text
    if unfinished:
        text = text[: text.index("<think>")]
    cut = min((i for m in end_markers if m and (i := text.find(m)) != -1), default=len(text))
    return text[:cut], unfinished
