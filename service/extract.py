"""Clean translation text out of raw model output (decoded WITH special tokens).

* GPT-OSS harmony: keep the ``final`` channel only (``<|channel|>final<|message|>...<|return|>``); output
  that never reaches the final channel (cut off while reasoning) gives no translation.
* ``<think>...</think>`` blocks (Qwen3 reasoning) are dropped; an unclosed one drops the rest.
* The text ends at the first end-of-turn token; other special tokens left over are removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HARMONY_FINAL = "<|channel|>final<|message|>"
HARMONY_CHANNEL = "<|channel|>"
END_MARKERS = ("<|return|>", "<|end|>", "<|call|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters other than tab and newline


def _cut(text: str, markers: Iterable[str]) -> str:
    cut = len(text)
    for marker in markers:
        if marker and (i := text.find(marker)) != -1:
            cut = min(cut, i)
    return text[:cut]


def extract_translation(raw: str, end_markers: Iterable[str] = (), final: bool = True) -> str:
    """The translation in ``raw``. ``final=False`` (streaming) returns a prefix that later text will not
    change: held back while the text may still be reasoning."""
    markers = (*END_MARKERS, *end_markers)
    text = raw
    if HARMONY_FINAL in text:
        text = text[text.rindex(HARMONY_FINAL) + len(HARMONY_FINAL) :]
    elif HARMONY_CHANNEL in text:
        return ""  # harmony output still (or only) in the analysis channel: no translation
    text = _THINK.sub("", text)
    if "<think>" in text:
        text = text[: text.index("<think>")]
    text = _cut(text, markers)
    text = _CONTROL.sub("", _SPECIAL.sub("", text))
    if not final:
        # A partial special token (e.g. "<|en") or '<think' at the end may still grow: hold it back.
        tail = text.rfind("<")
        if tail != -1 and ">" not in text[tail:]:
            text = text[:tail]
        return text.lstrip()
    return text.strip()
