"""Translation quality, pure functions: degenerate outputs (template residue, empty, loops) and corpus scores.

A *degenerate* output is scored as an EMPTY hypothesis (it contributes 0) and counted separately. chrF and
BLEU come from sacrebleu; neural segment scores (COMET) are averaged with degenerate outputs as 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Literal

import sacrebleu

from moe_specialists.models.extract import extract_answer

SegmentScorer = Callable[[list[str], list[str], list[str]], list[float]]  # (sources, hypotheses, refs) -> scores
Degeneracy = Literal["empty", "loop", "residue"]


def has_loop(text: str, max_ngram: int = 8, word_repeats: int = 4, char_repeats: int = 5, min_span: int = 20) -> bool:
    """A repetition loop: some word n-gram (n <= ``max_ngram``) repeated ``word_repeats`` times back to back
    ("the the the the"), or some unit of 1-30 characters repeated ``char_repeats`` times back to back over at
    least ``min_span`` characters ("abcabcabcabcabcabcabc"; catches loops in scripts without spaces)."""
    words = text.split()
    for n in range(1, max_ngram + 1):
        for i in range(len(words) - n * word_repeats + 1):
            unit = words[i : i + n]
            if all(words[i + r * n : i + (r + 1) * n] == unit for r in range(1, word_repeats)):
                return True
    for m in re.finditer(rf"(.{{1,30}}?)\1{{{char_repeats - 1},}}", text, re.DOTALL):
        if m.end() - m.start() >= min_span:
            return True
    return False


def classify(raw: str, end_markers: Sequence[str] = ()) -> tuple[str, Degeneracy | None]:
    """(translation, kind): kind is None for a usable output, else why it is degenerate (residue is checked
    first, then empty, then loop)."""
    text, residue = extract_answer(raw, end_markers)
    if residue:
        return text, "residue"
    if not text:
        return text, "empty"
    if has_loop(text):
        return text, "loop"
    return text, None


def bleu_tokenizer(lang: str) -> str:
    return {"zh": "zh", "ja": "char"}.get(lang, "13a")


def corpus_scores(hypotheses: list[str], references: list[str], target: str) -> tuple[float, float]:
    """(chrF, BLEU) of a corpus with sacrebleu (chrF: char 6-grams, beta 2; BLEU: 13a, zh/char for CJK)."""
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=bleu_tokenizer(target)).score
    return chrf, bleu


def segment_mean(score: SegmentScorer, sources: list[str], hyps: list[str], refs: list[str],
                 degenerate: list[bool]) -> float:
    """100 * sum of segment scores over non-degenerate outputs / n: a degenerate output scores 0."""
    keep = [i for i, d in enumerate(degenerate) if not d]
    picked = ([sources[i] for i in keep], [hyps[i] for i in keep], [refs[i] for i in keep])
    scores = score(*picked) if keep else []
    return 100 * sum(scores) / max(len(hyps), 1)
