"""Language codes normalised with langcodes; names from CLDR; the bundled translator's prompts unchanged."""

import hashlib

import pytest
from transformers import AutoTokenizer

from moe_specialists.models.languages import (
    UnknownLanguage,
    canonical,
    flores200,
    language_name,
    resolve,
    split_direction,
)
from moe_specialists.models.prompts import render
from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR


@pytest.mark.parametrize(
    ("code", "want"),
    [
        ("en", "en"), ("EN", "en"), ("en-US", "en"), ("EN-GB", "en"), ("eng", "en"), ("eng_Latn", "en"),
        ("de", "de"), ("deu", "de"), ("ger", "de"), ("deu_Latn", "de"), ("DE", "de"),
        ("ces", "cs"), ("ces_Latn", "cs"),
        ("zh", "zh"), ("zh-Hans", "zh"), ("zh-hans", "zh"), ("zho_Hans", "zh"), ("ZH-HANS", "zh"),
        ("zh-Hant", "zh-Hant"), ("zho_Hant", "zh-Hant"), ("zt", "zh-Hant"), ("ZH-HANT", "zh-Hant"),
        ("pt-BR", "pt"), ("pb", "pt"), ("PT-PT", "pt"), ("por_Latn", "pt"),
        ("arz", "arz"), ("arz_Arab", "arz"), ("ben_Beng", "bn"), ("iw", "he"), (" fr ", "fr"),
        ("sr-Latn", "sr-Latn"), ("sr-Cyrl", "sr"),
    ],
)
def test_canonical(code, want):
    assert canonical(code) == want


@pytest.mark.parametrize("code", ["", "auto", "xx", "123", "a", "en-zz-zz", "x" * 300, "und"])
def test_canonical_refuses(code):
    with pytest.raises(UnknownLanguage):
        canonical(code)


def test_names_from_cldr():
    assert [language_name(c) for c in ("en", "de", "fr", "cs", "ru", "es", "zh", "ja", "arz")] == [
        "English", "German", "French", "Czech", "Russian", "Spanish", "Chinese", "Japanese", "Egyptian Arabic"]
    assert language_name("zh-Hant") == "Chinese (Traditional)"
    assert language_name("pt-BR") == "Portuguese"  # regions are dropped


def test_split_direction_and_resolve():
    assert split_direction("en-de") == ("en", "de")
    assert split_direction("en-zh-Hant") == ("en", "zh-Hant")
    assert split_direction("zh-Hant-en") == ("zh-Hant", "en")
    with pytest.raises(ValueError, match="src-tgt"):
        split_direction("ende")
    assert resolve("zh-Hant", {"zh", "en"}) == "zh"
    assert resolve("zh-Hant", {"zh-Hant", "zh"}) == "zh-Hant"
    assert resolve("fr", {"zh", "en"}) is None
    assert resolve("acm", {"acm-Arab", "en"}) == "acm-Arab"
    assert resolve("arb", {"ar", "en"}) == "ar"
    assert resolve("sw", {"swh", "en"}) == "swh"


def test_flores200():
    codes = flores200()
    assert len(codes) == 202  # 204 FLORES-200 languages less the two the NLLB list leaves out
    assert {"en", "de", "fr", "cs", "ru", "es", "zh", "zh-Hant", "ja", "bn", "arz"} <= set(codes)
    assert all(canonical(c) == c for c in codes)


# sha256 over the prompts and training sequences of every direction among the bundled translator's languages,
# recorded with the hand-written name table this module replaced (its chat template was trained on them).
BUNDLED_PROMPTS_SHA256 = "f76f1015f9617e84036f99c978a7dca09a0e9265c9b3bbf6de6a06d319824cd1"


def test_bundled_prompts_byte_identical():
    tok = AutoTokenizer.from_pretrained(BUNDLED_MODEL_DIR)
    assert render(tok, "en", "de", "The cat sleeps.") == (
        "<|user|>Translate this passage from English to German.\n\nThe cat sleeps.<|end|><|assistant|>")
    assert render(tok, "zh", "ja", "x", "y") == (
        "<|user|>Translate this passage from Chinese to Japanese.\n\nx<|end|><|assistant|>y<|end|>")
    langs = ["en", "de", "fr", "cs", "ru", "es", "zh", "ja"]
    h = hashlib.sha256()
    for s in langs:
        for t in langs:
            if s != t:
                h.update(render(tok, s, t, "The cat sleeps.").encode() + b"\0")
                h.update(render(tok, s, t, "The cat sleeps.", "Die Katze schläft.").encode() + b"\0")
    assert h.hexdigest() == BUNDLED_PROMPTS_SHA256
