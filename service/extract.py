"""Clean translation text out of raw model output (decoded WITH special tokens).

* GPT-OSS harmony: keep the ``final`` channel only (``<|channel|>final<|message|>...<|return|>``); output
  that never reaches the final channel (cut off while reasoning) gives no translation.
* ``<think>...</think>`` blocks (Qwen3 reasoning) are dropped; an unclosed one drops the rest.
* The text ends at the first end-of-turn token; other special tokens left over are removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from moe_specialists.models.prompts import answer_span

END_MARKERS = ("<|return|>", "<|end|>", "<|call|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")
_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters other than tab and newline


def extract_translation(raw: str, end_markers: Iterable[str] = (), final: bool = True) -> str:
    """The translation in ``raw``. ``final=False`` (streaming) returns a prefix that later text will not
    change: held back while the text may still be reasoning."""
    text, _ = answer_span(raw, (*END_MARKERS, *end_markers))
    text = _CONTROL.sub("", _SPECIAL.sub("", text))
    if not final:
        # A partial special token (e.g. "<|en") or '<think' at the end may still grow: hold it back.
        tail = text.rfind("<")
        if tail != -1 and ">" not in text[tail:]:
            text = text[:tail]
        return text.lstrip()
    return text.strip()
