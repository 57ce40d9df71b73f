"""Language codes and names, from ``langcodes`` (IANA registry + CLDR data), not a hand table.

Every code is normalised at the edge into one canonical tag: the language subtag, plus a script subtag only
when it is not the language's default script. So ``EN``, ``en-US``, ``eng``, ``eng_Latn`` -> ``en``;
``zh-Hans``, ``zho_Hans``, ``cmn`` -> ``zh``; ``zh-Hant``, ``zho_Hant``, ``zt`` -> ``zh-Hant``; ``pt-BR``, ``pb``
-> ``pt``; ``deu``, ``ger``, ``deu_Latn`` -> ``de``; ``ces`` -> ``cs``. Regions are dropped (a translation
model writes the language, not a country's variant); a non-default script is kept, and the prompt names it
("Chinese (Traditional)").
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import langcodes
from langcodes.data_dicts import MACROLANGUAGES

# Codes that LibreTranslate clients send which are not language tags at all.
LIBRETRANSLATE_ALIASES = {"zt": "zh-Hant", "pb": "pt-BR"}


class UnknownLanguage(ValueError):
    """A code that is no language tag (with what was wrong)."""


@cache
def canonical(code: str) -> str:
    """The canonical tag of ``code`` (BCP-47, ISO 639-1/2/3 or FLORES-200 ``xxx_Scrp``, any case); raises
    ``UnknownLanguage`` when it names no language."""
    raw = code.strip()
    tag = LIBRETRANSLATE_ALIASES.get(raw.lower(), raw).replace("_", "-")
    try:
        lang = langcodes.Language.get(tag)
    except (langcodes.LanguageTagError, ValueError) as e:
        raise UnknownLanguage(f"{code[:40]!r} is not a language tag ({e})") from None
    if not lang.language or lang.language in ("und", "mul", "zxx", "mis") or not lang.is_valid():
        raise UnknownLanguage(f"{code[:40]!r} is not a registered language code")
    script = lang.script
    if script and script == default_script(lang.language):
        script = None
    return str(langcodes.Language.make(language=lang.language, script=script))


@cache
def macro_canonical(code: str) -> str:
    """``canonical``, with a language that CLDR counts as its macrolanguage's main member named by the
    macrolanguage: cmn_Hans -> zh, arb_Arab -> ar, swh -> sw; other members stay (yue, arz). Data files are
    matched by it, so ``-l zh`` finds FLORES+'s ``cmn_Hans``."""
    return canonical(langcodes.standardize_tag(canonical(code), macro=True))


@cache
def default_script(language: str) -> str | None:
    """The script a language is written in when none is named (CLDR likely subtags): zh -> Hans."""
    return langcodes.Language.get(language).maximize().script


def base_language(code: str) -> str:
    """The language subtag of a canonical tag: zh-Hant -> zh."""
    return code.split("-", 1)[0]


def macrolanguage(code: str) -> str:
    """The macrolanguage of a language (arz -> ar, cmn -> zh), else the language itself."""
    lang = base_language(code)
    return MACROLANGUAGES.get(lang, lang)


@cache
def language_name(code: str) -> str:
    """English name of a (canonical or not) code from CLDR: de -> German, zh-Hant -> Chinese (Traditional)."""
    return langcodes.Language.get(canonical(code)).display_name("en")


def split_direction(direction: str) -> tuple[str, str]:
    """'en-de' -> ('en', 'de'), 'en-zh-Hant' -> ('en', 'zh-Hant'): the one split at a '-' whose two sides are
    language codes (canonicalised). Raises ``ValueError`` when there is none or more than one."""
    parts = direction.split("-")
    found = []
    for i in range(1, len(parts)):
        try:
            found.append((canonical("-".join(parts[:i])), canonical("-".join(parts[i:]))))
        except UnknownLanguage:
            continue
    if not found and len(parts) == 2:
        bad = next(part for part in parts if not _is_language(part))
        raise ValueError(f"unknown language {bad!r} in {direction!r}: give BCP-47, ISO 639 or FLORES-200 codes")
    if len(found) != 1:
        why = "no split into two language codes" if not found else f"ambiguous: {found}"
        raise ValueError(f"direction {direction!r} is not of the form 'src-tgt' (e.g. 'en-de'): {why}")
    return found[0]


def _is_language(code: str) -> bool:
    try:
        canonical(code)
    except UnknownLanguage:
        return False
    return True


@cache
def flores200() -> tuple[str, ...]:
    """The canonical codes of the FLORES-200 languages (the NLLB list that ships with transformers)."""
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    return tuple(dict.fromkeys(canonical(code) for code in FAIRSEQ_LANGUAGE_CODES))


def resolve(code: str, served: Iterable[str]) -> str | None:
    """The served language a canonical code is answered in: itself, else its language without the script
    (zh-Hant -> zh when only zh is served), else the one served form with a script (acm -> acm-Arab), else
    its macrolanguage (arb -> ar) or its one served member (sw -> swh, FLORES' code), else None."""
    served = set(served)
    if code in served:
        return code
    if base_language(code) in served:
        return base_language(code)
    scripted = [s for s in served if base_language(s) == code]  # acm served as acm-Arab only
    if len(scripted) == 1:
        return scripted[0]
    if macrolanguage(code) in served:  # arb asked, ar served
        return macrolanguage(code)
    members = [s for s in served if "-" not in s and macrolanguage(s) == code]  # sw asked, swh served
    return members[0] if len(members) == 1 else None
