"""The bundled tiny MoE translator (Qwen3-MoE architecture): weights, tokenizer, model card, and the plans of
the specialists the gateway serves by default (``plans/``, made with ``moe-specialists plan``; see the card)."""

from __future__ import annotations

from pathlib import Path

from moe_specialists.models.checkpoint import BUNDLED_MODEL_FOLDER
from moe_specialists.models.registry.entries import Quality
from moe_specialists.models.registry.materialise import materialise
from moe_specialists.models.registry.store import Registry

BUNDLED_MODEL_DIR = BUNDLED_MODEL_FOLDER
PLANS_DIR = BUNDLED_MODEL_DIR / "plans"
LANGUAGES = ["en", "de", "fr", "ru", "es", "cs"]  # trained on zh and ja too, but poor at them (see the card)


def _chrf(scores: dict[str, float]) -> list[Quality]:
    return [Quality(metric="chrF", direction=d, score=s, num_sentences=100) for d, s in scores.items()]


# name -> what it serves, its plan, and chrF measured on the first 100 FLORES devtest passages per direction
# (`moe-specialists evaluate <specialist> -d ... --limit 100`, transformers, greedy).
BUNDLED_SPECIALISTS: dict[str, dict] = {
    "en-de": {
        "plan": PLANS_DIR / "en-de.json",  # 50% of the experts dropped, calibrated on en<->de
        "directions": ["en-de", "de-en"],
        "quality": _chrf({"en-de": 35.0, "de-en": 36.1}),
    },
    "multilingual": {
        "plan": PLANS_DIR / "multilingual.json",  # 25% dropped, calibrated on en<->{de,fr,ru,es,cs}
        "languages": LANGUAGES,
        "quality": _chrf({"en-de": 36.7, "de-en": 38.8, "en-es": 34.3, "es-en": 33.8, "en-cs": 30.4, "cs-en": 36.9}),
    },
}


def bundled_registry(root: str | Path) -> Registry:
    """A registry at ``root`` holding the bundled specialists, materialised from base + plan (cached by plan
    hash: the first call slices the 47 MB checkpoint, later calls reuse it)."""
    registry = Registry(root)
    for name, spec in BUNDLED_SPECIALISTS.items():
        materialise(registry, name, base=BUNDLED_MODEL_DIR, overwrite=True, **spec)
    return registry

