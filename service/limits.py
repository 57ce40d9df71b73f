"""What one translation request may hold: the limits of the settings, checked before any language, routing or
engine work."""

from __future__ import annotations

from moe_specialists.service.settings import Settings
from moe_specialists.service.translation_errors import InvalidInput, TooLarge


def check_limits(texts: list[str], max_tokens: int | None, s: Settings) -> None:
    """Refuse a request over the settings' limits (texts per request, characters per text and per request,
    max_tokens) or with a text there is nothing to translate in (empty, a lone surrogate)."""
    if not texts:
        raise InvalidInput("empty_batch", "no text to translate: send a string or a non-empty list")
    if len(texts) > s.max_batch_size:
        raise TooLarge(
            "batch_too_large", f"{len(texts)} texts in one request; the limit is {s.max_batch_size}",
            limit=s.max_batch_size,
        )
    for i, text in enumerate(texts):
        if s.max_chars_per_text is not None and len(text) > s.max_chars_per_text:
            raise TooLarge(
                "text_too_long",
                f"text {i} has {len(text)} characters; the limit is {s.max_chars_per_text} per text",
                limit=s.max_chars_per_text, index=i,
            )
        if not text:  # (a text of only whitespace is answered as it is, without an engine)
            raise InvalidInput("empty_text", f"text {i} is empty: nothing to translate", index=i)
        try:
            text.encode()
        except UnicodeEncodeError as e:  # a lone surrogate (JSON can escape one): no tokenizer takes it
            raise InvalidInput(
                "invalid_text", f"text {i} has a lone surrogate {text[e.start]!r} at character {e.start}: "
                "it is not valid Unicode; send UTF-8 text", index=i,
            ) from None
    total = sum(len(t) for t in texts)
    if total > s.max_chars_per_batch:
        raise TooLarge(
            "batch_too_long",
            f"the texts have {total} characters together; the limit is {s.max_chars_per_batch} per request",
            limit=s.max_chars_per_batch,
        )
    if max_tokens is not None and max_tokens > s.max_tokens_limit:
        raise InvalidInput(
            "max_tokens_too_large", f"max_tokens {max_tokens} is above the limit {s.max_tokens_limit}",
            limit=s.max_tokens_limit,
        )
