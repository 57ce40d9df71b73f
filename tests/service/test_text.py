"""Translation extraction and source-language detection (pure functions)."""

import itertools

import pytest

from moe_specialists.service.detect import Detector
from moe_specialists.service.extract import extract_translation


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Hallo Welt<|end|>", "Hallo Welt"),
        ("  Hallo Welt<|im_end|>trailing", "Hallo Welt"),
        ("<think>\nthe user wants German\n</think>\n\nHallo Welt", "Hallo Welt"),
        ("<think>still thinking", ""),
        (
            "<|channel|>analysis<|message|>User wants German.<|end|><|start|>assistant"
            "<|channel|>final<|message|>Hallo Welt<|return|>",
            "Hallo Welt",
        ),
        ("<|channel|>analysis<|message|>User wants German, so", ""),  # cut off before the final channel
        ("Hallo<|pad|> Welt", "Hallo Welt"),
    ],
)
def test_extract(raw, clean):
    assert extract_translation(raw) == clean


def test_extract_custom_end_marker_and_streaming_prefix():
    assert extract_translation("Hallo</eos>x", end_markers=["</eos>"]) == "Hallo"
    assert extract_translation("Hallo Welt<|en", final=False) == "Hallo Welt"
    assert extract_translation("Hallo <thi", final=False) == "Hallo "
    assert extract_translation("Hallo </thi", final=False) == "Hallo "
    assert extract_translation("Hallo<eo", final=False) == "Hallo"
    assert extract_translation("Hallo</eo", end_markers=["</eos>"], final=False) == "Hallo"
    assert extract_translation("Hallo <|", final=False) == "Hallo "
    # a "<" that can no longer become a marker streams at once
    assert extract_translation("a < b", final=False) == "a < b"
    assert extract_translation("x<y", final=False) == "x<y"
    assert extract_translation("<<", final=False) == "<"


@pytest.mark.parametrize("raw", [
    "Ist 3 < 4? Ja, und 5 > 4.<|im_end|>",
    "<think>\nthe user wants German\n</think>\n\nHallo <b>Welt</b><|im_end|>",
    "Hallo<|pad|> Welt<eos>",
    "<|channel|>final<|message|>a <|x y <| <thinking> ok<|return|>",
])
def test_streamed_prefixes_only_grow_and_end_at_the_final_text(raw):
    prefixes = [extract_translation(raw[:i], final=False) for i in range(len(raw) + 1)]
    for before, after in itertools.pairwise(prefixes):
        assert after.startswith(before), (before, after)
    assert prefixes[-1].strip() == extract_translation(raw)


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("The cat is sitting on the mat and it is happy.", "en"),
        ("Die Katze sitzt auf der Matte und ist nicht müde.", "de"),
        ("Le chat est assis sur le tapis avec les enfants.", "fr"),
        ("Кошка сидит на коврике.", "ru"),
        ("猫坐在垫子上。", "zh"),
        ("猫はマットの上に座っています。", "ja"),
        ("El gato está sentado en la alfombra con los niños.", "es"),
    ],
)
def test_detect(text, language):
    code, confidence = Detector().detect(text, ["en", "de", "fr", "ru", "zh", "ja", "es", "cs"])
    assert code == language and 0 < confidence <= 1


def test_detect_restricted_to_candidates():
    detector = Detector()
    # Russian with only Latin-script candidates: no evidence for either, so the defined fallback (never a
    # language outside the candidates)
    assert detector.detect("Кошка сидит", ["en", "de"]) == ("en", 0.0)
    # Spanish shares "en" and "la" with French; it must not come out as French
    assert detector.detect("El gato está sentado en la alfombra con los niños.", ["fr", "es"])[0] == "es"
    assert detector.detect("Кошка сидит на коврике.", ["de", "ru"])[0] == "ru"
    assert detector.detect("مرحبا بك في القاهرة", ["en", "arz"])[0] == "arz"  # by its macrolanguage (ar)
    assert detector.detect("貓在睡覺", ["en", "zh-Hant"])[0] == "zh-Hant"
    assert detector.detect("", ["fr", "en", "de"]) == ("en", 0.0)  # no evidence: the fallback
    assert detector.detect("Hello", ["qaa"]) == ("qaa", 0.0)  # a language the model does not know
