"""The answer span of generated text: what both the evaluation harness and the gateway extract from."""

import pytest

from moe_specialists.models.prompts import answer_span

ENDS = ("<|end|>", "<|return|>", "<eos>")


@pytest.mark.parametrize(
    ("raw", "span", "unfinished"),
    [
        ("Hallo Welt<|end|>more", "Hallo Welt", False),
        ("Hallo<eos>x<|end|>", "Hallo", False),  # the first end marker wins
        ("no end marker", "no end marker", False),
        ("<think>why</think>Hallo<|end|>", "Hallo", False),
        ("Hal<think>why", "Hal", True),
        ("<|channel|>analysis<|message|>a<|end|><|channel|>final<|message|>Hallo<|return|>", "Hallo", False),
        ("<|channel|>analysis<|message|>cut off", "", True),
    ],
)
def test_answer_span(raw, span, unfinished):
    assert answer_span(raw, ENDS) == (span, unfinished)


def test_answer_span_ignores_empty_markers():
    assert answer_span("Hallo", ("", "<|end|>")) == ("Hallo", False)
