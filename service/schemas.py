"""Request and response bodies of the API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Sampling(BaseModel):
    """Decoding options; the default is greedy (temperature 0)."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=1000, description="0: no top-k cut")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | list[str] = Field(description="one text or a batch of texts")
    source: str = Field("auto", description='language code, or "auto" to detect it (py3langid)')
    target: str = Field(description="language code")
    max_tokens: int | None = Field(None, ge=1, description="most tokens generated per segment (sentence)")
    sampling: Sampling = Sampling()
    stream: bool = Field(False, description="server-sent events; one text only")
    specialist: str | None = Field(None, description="force this specialist instead of routing")


class DetectedLanguage(BaseModel):
    language: str
    confidence: float
    method: str


class TranslationItem(BaseModel):
    text: str
    source: str
    specialist: str
    route: Literal["exact", "pair", "multilingual", "base", "forced", "overflow", "none"] = Field(
        description="why this specialist: the best ready one for the direction (exact, pair, multilingual, "
        "base), asked for by name (forced), or the next capable one because the chosen one's queue was full "
        "(overflow); none: a text of only whitespace, answered as it is without a specialist")
    overflow_from: str | None = Field(None, description="route overflow: the specialist whose queue was full")
    generated_tokens: int
    finish_reason: str | None
    detected_language: DetectedLanguage | None = None
    segments: int = Field(1, description="the sentences (and parts of long ones) the text was translated in")


class TranslateResponse(BaseModel):
    translations: list[TranslationItem]
    target: str
    specialist: str = Field(description="the specialist(s) that answered, comma-separated")


class Language(BaseModel):
    code: str
    name: str
    targets: list[str]


class Direction(BaseModel):
    source: str
    target: str
    specialist: str
    route: str


class LanguagesResponse(BaseModel):
    languages: list[Language]
    directions: list[Direction]


class SpecialistInfo(BaseModel):
    name: str
    backend: str
    state: str
    error: str | None
    path: str
    directions: list[str]
    languages: list[str]
    base: bool
    inflight: int
    queue_limit: int
    # null for a plan whose check has not passed (yet): its sizes are not known
    weight_bytes: int | None
    base_weight_bytes: int | None
    bytes_saved: int | None


class LibreTranslateRequest(BaseModel):
    """LibreTranslate's /translate body (JSON or form); unknown fields (e.g. alternatives) are ignored."""

    model_config = ConfigDict(extra="ignore")
    q: str | list[str]
    source: str = "auto"
    target: str
    format: Literal["text", "html"] = "text"
    alternatives: int = Field(0, ge=0, le=10, description="alternative translations wanted ([] when the engine "
                              "gives none)")
    api_key: str | None = None
    glossary_id: str | None = Field(None, description="extension: a DeepL glossary of this key (/v2/glossaries) "
                                    "whose terms the translation must use; needs an explicit source")


class LibreTranslateDetectRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    q: str | list[str]
    api_key: str | None = None


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | list[str] = Field(description="one text or a batch")
    target: str | None = Field(None, description="choose among the served sources of this target")


class DetectResponse(BaseModel):
    detections: list[DetectedLanguage]
