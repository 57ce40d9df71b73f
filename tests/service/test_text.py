"""Translation extraction and source-language detection (pure functions)."""

import pytest

from moe_specialists.service.detect import detect_language
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
    code, confidence = detect_language(text, ["en", "de", "fr", "ru", "zh", "ja", "es", "cs"])
    assert code == language and 0 < confidence <= 1


@pytest.mark.parametrize(
    ("text", "candidates", "expected"),
    [
        # Spanish shares "en" and "la" with French: es 5 words + 0.5 x 2 letters (ñ, á) = 6, fr 2 words = 2,
        # so es with 6 / 8; it must not come out as French.
        ("El gato está sentado en la alfombra con los niños.", ["fr", "es"], ("es", 0.75)),
        # German among Latin candidates: de 6 words (die auf der und ist nicht) + 0.5 x ü, en and fr nothing.
        ("Die Katze sitzt auf der Matte und ist nicht müde.", ["en", "fr", "de"], ("de", 1.0)),
        # Only Cyrillic letters: all the mass on ru, none on the Latin candidate.
        ("Кошка сидит на коврике.", ["de", "ru"], ("ru", 1.0)),
        # No evidence for any candidate (Russian, only Latin languages allowed): the more common one, with
        # confidence 0 (the defined fallback), never a language outside the candidates.
        ("Кошка сидит", ["de", "en"], ("en", 0.0)),
    ],
)
def test_detect_among_candidates(text, candidates, expected):
    assert detect_language(text, candidates) == expected
