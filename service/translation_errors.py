"""What the translation flow refuses, as domain errors: each names itself (``code``), says what is wrong and
what is accepted (``message``) and carries its details (``details``: the fields a client gets beside the
message, e.g. ``accepted``, ``limit``). Nothing here knows HTTP: the router edge maps each kind to a status
and headers once (``service.errors.api_error``)."""

from __future__ import annotations

from typing import Any


class TranslationError(Exception):
    def __init__(self, code: str, message: str, **details: Any):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class InvalidInput(TranslationError):
    """The request cannot be translated as sent: no text, a blank text or a lone surrogate, an option out of
    range, source equal to target, a batch to stream, an unknown specialist, a text the engine refuses."""


class UnservedLanguage(InvalidInput):
    """A language code that no served language answers (``accepted``: the codes that are; ``served``: each
    specialist's languages)."""


class UnsupportedPair(InvalidInput):
    """Both languages are served, but no specialist translates between them (``served``: what is)."""


class InvalidGlossary(InvalidInput):
    """Glossary entries that cannot be used: malformed TSV/CSV, a duplicate source term, too many entries, a
    glossary for another language pair than the request's."""


class NotFound(TranslationError):
    """Something named by id that this API key does not have."""


class GlossaryNotFound(NotFound):
    """No glossary with that id for this API key."""


class DocumentNotFound(NotFound):
    """No document translation with that id and key (never made, expired, or already downloaded)."""


class TooLarge(TranslationError):
    """Over a size limit: texts per request, characters per text or per request (``limit``)."""


class Overloaded(TranslationError):
    """Every engine that could serve the texts is ready but its queue is full: room comes as texts finish,
    retry after ``retry_after_s``."""

    def __init__(self, code: str, message: str, retry_after_s: int, **details: Any):
        super().__init__(code, message, **details)
        self.retry_after_s = retry_after_s


class Unavailable(TranslationError):
    """No engine that could serve the texts is ready: retry after ``retry_after_s`` (the soonest expected
    recovery), or None when none of them will serve again."""

    def __init__(self, code: str, message: str, retry_after_s: int | None, **details: Any):
        super().__init__(code, message, **details)
        self.retry_after_s = retry_after_s


class ShuttingDown(Unavailable):
    """The gateway is draining: retry on another instance (this connection is not worth keeping)."""


class TimedOut(TranslationError):
    """No answer within the request timeout (``limit_seconds``)."""
