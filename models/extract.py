"""The one answer extractor: clean translation text out of raw model output (decoded WITH special tokens),
shared by evaluation, distillation and the gateway, so what is scored is what is served.

* GPT-OSS harmony: keep the ``final`` channel only (``<|channel|>final<|message|>...<|return|>``); output
  that never reaches the final channel (cut off while reasoning) gives no translation.
* ``<think>...</think>`` blocks (Qwen3 reasoning) are dropped; an unclosed one drops the rest.
* The text ends at the first end-of-turn marker (``END_MARKERS`` plus the engine's own).
* Residue: special tokens, role lines and control characters left over are removed; the first two (template
  residue: the model started a new turn, or never finished reasoning) are reported so that evaluation can
  count the output as degenerate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from moe_specialists.models.prompts import answer_span

# End-of-turn markers of the families we know (the tokenizer's own eos is added at run time).
END_MARKERS = ("<|return|>", "<|end|>", "<|call|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<eos>")
# Word-like special tokens, removed wherever they appear (like every ``<|...|>`` token).
WORD_TOKENS = ("<think>", "</think>", "<eos>", "<pad>", "<bos>", "<s>", "<unk>")
_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|" + "|".join(map(re.escape, WORD_TOKENS)))
_ROLE_LINE = re.compile(r"^\s*(?:assistant|user|system)\s*:?\s*$", re.IGNORECASE | re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters other than tab and newline


def extract_answer(raw: str, end_markers: Iterable[str] = (), strip: bool = True) -> tuple[str, bool]:
    """(translation, residue) of ``raw`` (prompt excluded). ``residue``: the answer span held template
    residue (special tokens such as ``<|user|>``, role lines, an unclosed ``<think>``, harmony output that
    never reaches its final channel), removed from the returned text. ``strip=False`` keeps surrounding
    whitespace (a streamed prefix)."""
    text, residue = answer_span(raw, (*END_MARKERS, *end_markers))
    cleaned = _ROLE_LINE.sub("", _SPECIAL.sub("", text))
    residue = residue or cleaned != text
    cleaned = _CONTROL.sub("", cleaned)
    return (cleaned.strip() if strip else cleaned), residue
