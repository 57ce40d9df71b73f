"""Language identification for ``source: "auto"`` and /detect: py3langid (langid.py's naive Bayes model of 97
languages, shipped inside the wheel, offline) restricted to the candidate languages.

Restricting is renormalising: the softmax over a subset of classes is the full softmax divided by the subset's
mass, so one identifier serves every candidate set (nothing mutated per request). A candidate maps to the
model's label by its language (zh-Hant -> zh) or macrolanguage (arz -> ar); when two candidates share a label,
the one spelled like the label wins. Fallback: no candidate the model knows -> the first candidate (English
when it is one), confidence 0."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from py3langid.langid import MODEL_FILE, LanguageIdentifier

from moe_specialists.models.languages import base_language, macrolanguage

METHOD = "py3langid"


class Detector:
    def __init__(self) -> None:
        self.identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.labels = frozenset(self.identifier.labels)

    def label(self, code: str) -> str | None:
        """The model's label for a canonical code, or None when the model does not know the language."""
        for label in (code, base_language(code), macrolanguage(code)):
            if label in self.labels:
                return label
        return None

    def detect(self, text: str, candidates: Collection[str]) -> tuple[str, float]:
        """(language among ``candidates``, confidence in [0, 1]). Candidates must not be empty."""
        assert candidates, "detect needs candidate languages"
        by_label: dict[str, str] = {}
        for code in sorted(candidates, key=lambda c: (c != self.label(c), c)):  # spelled like the label first
            if (label := self.label(code)) is not None:
                by_label.setdefault(label, code)
        if not by_label:
            return self.fallback(candidates), 0.0
        scores = {lang: p for lang, p in self.identifier.rank(text) if lang in by_label}
        mass = sum(scores.values())
        best = max(sorted(scores), key=scores.__getitem__)
        if mass <= 0 or max(scores.values()) - min(scores.values()) < 1e-9:  # no evidence (no letters)
            return self.fallback(candidates), 0.0
        return by_label[best], round(scores[best] / mass, 4)

    @staticmethod
    def fallback(candidates: Collection[str]) -> str:
        return "en" if "en" in candidates else sorted(candidates)[0]

    def detect_batch(self, texts: Sequence[str], candidates: Collection[str]) -> list[tuple[str, float]]:
        return [self.detect(text, candidates) for text in texts]
