"""Gateway settings (environment prefix ``MOE_``; lists and specialists as JSON, e.g.
``MOE_SPECIALISTS='[{"name": "en-de", "path": "/models/en-de", "directions": ["en-de"]}]'``)."""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from moe_specialists.models.file_hashes import CACHE_ENV
from moe_specialists.models.languages import UnknownLanguage, canonical, split_direction
from moe_specialists.models.registry.entries import NAME_PATTERN, SpecialistEntry
from moe_specialists.models.registry.store import REGISTRY_ENV, RETIRED_REGISTRY_VARIABLES

REMOTE_PREFIXES = ("http://", "https://")


def parse_direction(direction: str) -> tuple[str, str]:
    """'en-de' -> ('en', 'de'), 'en-zh-Hant' -> ('en', 'zh-Hant'); both codes canonical languages that differ."""
    src, tgt = split_direction(direction)
    if src == tgt:
        raise ValueError(f"direction {direction!r} has the same source and target")
    return src, tgt


def canonical_languages(codes: list[str]) -> list[str]:
    """Canonical codes (``models.languages.canonical``), in order, without duplicates; ValueError naming the
    codes that are no language."""
    out, unknown = [], []
    for code in codes:
        try:
            out.append(canonical(code))
        except UnknownLanguage:
            unknown.append(code)
    if unknown:
        raise ValueError(f"unknown languages {unknown}: give BCP-47 (de, pt-BR, zh-Hant), ISO 639 (deu) or "
                         "FLORES-200 (deu_Latn) codes")
    return list(dict.fromkeys(out))


class SpecialistSpec(BaseModel):
    """One model the gateway serves: a local dir / hub id (in-process vLLM engine) or the URL of a remote
    vLLM OpenAI-compatible server. It serves ``directions`` ("en-de"), or every pair among ``languages``
    (multilingual), or any pair (``base``: the unpruned base model, the last resort of routing)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    path: str = Field(min_length=1)
    directions: list[str] = []
    languages: list[str] = []
    base: bool = False
    served_model_name: str | None = None  # remote: the server's model name (default: its first model)
    tokenizer: str | None = None  # where to load the tokenizer for prompts (default: path / server's root)
    weight_bytes: int = 0
    base_weight_bytes: int = 0
    experts_kept: int = 0
    experts_total: int = 0
    parameters: int = 0

    @field_validator("directions")
    @classmethod
    def _directions(cls, value: list[str]) -> list[str]:
        return ["-".join(parse_direction(direction)) for direction in value]

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        return canonical_languages(value)

    @model_validator(mode="after")
    def _serves_something(self) -> SpecialistSpec:
        if not (self.directions or len(self.languages) >= 2 or self.base):
            raise ValueError(
                f"specialist {self.name!r} serves nothing: give directions (en-de), two or more languages "
                "(multilingual) or mark it as the base model"
            )
        return self

    @property
    def remote(self) -> bool:
        return self.path.startswith(REMOTE_PREFIXES)

    @classmethod
    def parse_option(cls, option: str) -> SpecialistSpec:
        """``name=path:directions`` from the command line. directions: ``en-de,de-en`` (directions),
        ``en,de,fr`` (multilingual among these languages) or ``base``. path may be an http(s) URL."""
        name, sep, rest = option.partition("=")
        path, sep2, served = rest.rpartition(":")
        if not sep or not sep2 or not path or not served:
            raise ValueError(
                f"--specialist {option!r}: expected name=path:directions, e.g. "
                "en-de=/models/en-de:en-de,de-en or multi=http://10.0.0.5:8000:en,de,fr or big=/models/base:base"
            )
        items = [item.strip() for item in served.split(",") if item.strip()]
        if items == ["base"]:
            return cls(name=name, path=path, base=True)
        if all("-" in item for item in items):
            return cls(name=name, path=path, directions=items)
        if all("-" not in item for item in items):
            return cls(name=name, path=path, languages=items)
        raise ValueError(f"--specialist {option!r}: mix of directions and languages in {served!r}")

    @classmethod
    def from_entry(cls, entry: SpecialistEntry) -> SpecialistSpec:
        """A registry entry: a base entry (no plan, no directions, no languages) serves any pair."""
        is_base = entry.plan is None and not entry.directions and not entry.languages
        return cls(
            name=entry.name,
            path=entry.path,
            directions=entry.directions,
            languages=entry.languages,
            base=is_base,
            weight_bytes=entry.weight_bytes,
            base_weight_bytes=entry.base_weight_bytes,
            experts_kept=sum(entry.experts_per_layer),
            experts_total=sum(entry.base_experts_per_layer or entry.experts_per_layer),
            parameters=entry.parameters,
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOE_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    specialists: list[SpecialistSpec] = []
    # every entry of this registry is served too; `serve` with nothing to serve uses the default registry
    # (models.registry.store.default_registry_dir) when it holds entries
    registry_dir: Path | None = None
    # plan views (specialists served from their base and a plan, `-s name=PLAN.json:...`) are made here
    views_dir: Path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moe-specialists" / "views"
    # what the gateway keeps between restarts: DeepL glossaries (<state_dir>/glossaries/<key hash>/<id>.json)
    state_dir: Path = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "moe-specialists"
    max_glossary_entries: int = Field(10_000, ge=1)  # entries of one glossary dictionary

    # In-process vLLM engines.
    dtype: str = "auto"
    # context of each in-process engine: its model's own (max_position_embeddings as vLLM derives it), capped by
    # this when set (never more than the model supports)
    max_model_len: int | None = Field(None, ge=16)
    max_num_seqs: int = Field(32, ge=1)
    gpu_memory_share: float = Field(0.85, gt=0, le=1)  # split evenly among the in-process engines
    enforce_eager: bool = False  # skip torch.compile (start-up in seconds instead of a minute on a CPU)
    engine_start_timeout_s: float = Field(900, gt=0)
    remote_timeout_s: float = Field(10, gt=0)  # connecting / health checks of remote servers
    health_interval_s: float = Field(5, gt=0)

    # Supervision: a failed engine is restarted (a remote one reconnected) after initial, 2x, 4x ... seconds,
    # at most max_delay apart; an in-process engine that fails max_restarts restarts in a row is given up.
    engine_restart_initial_delay_s: float = Field(1, gt=0)
    engine_restart_max_delay_s: float = Field(30, gt=0)
    engine_max_restarts: int = Field(5, ge=0)
    drain_timeout_s: float = Field(30, ge=0)  # SIGTERM: in-flight requests finish within this, then engines close

    # Request limits. Characters per request: DeepL's 128 KiB body; per text: none unless set (LibreTranslate's
    # --char-limit is off by default). Every text is cut into sentences (service.segments), so a long text is many
    # short prompts, not one.
    max_chars_per_text: int | None = Field(None, ge=1)
    max_chars_per_batch: int = Field(131072, ge=1)  # characters of all the texts of one request
    # A sentence longer than this is cut again after clauses, then between words (never truncated). 500: with
    # ~4 characters per token in Latin scripts, ~125 source tokens, so prompt and translation fit a 512-token
    # context and the translation fits default_max_tokens; lower it for CJK text on short-context models.
    max_segment_chars: int = Field(500, ge=16)
    max_batch_size: int = Field(64, ge=1)
    # Segment translations kept and answered again without an engine (service.cache), e.g. "64MiB"; 0: off.
    translation_cache_size: ByteSize = ByteSize(0)
    max_queue_per_engine: int = Field(64, ge=1)  # texts waiting or running on one engine
    default_max_tokens: int = Field(256, ge=1)
    max_tokens_limit: int = Field(1024, ge=1)
    request_timeout_s: float = Field(120, gt=0)
    retry_after_s: int = Field(2, ge=1)

    access_log: bool = True  # uvicorn's line per request
    api_keys: list[str] = []  # empty: no key needed
    cors_origins: list[str] = []
    readiness: Literal["any", "all"] = "any"  # /readyz is 200 when any (or all) engines are ready
    # Per-API-key quotas (requests without a key share one "anonymous" account); None: unlimited.
    quota_requests_per_minute: int | None = Field(None, ge=1)
    quota_characters_per_day: int | None = Field(None, ge=1)
    # CORS of the LibreTranslate routes (browser integrations call them from any page); [] turns it off.
    libretranslate_cors_origins: list[str] = ["*"]
    max_file_chars: int = Field(200_000, ge=1)  # /translate_file, /v2/document: characters of one uploaded file
    # Languages a base model (a spec with base=true) is offered in; empty: the FLORES-200 languages.
    base_languages: list[str] = []

    @field_validator("base_languages")
    @classmethod
    def _base_languages(cls, value: list[str]) -> list[str]:
        return canonical_languages(value)

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if self.max_chars_per_text is not None and self.max_chars_per_batch < self.max_chars_per_text:
            raise ValueError("max_chars_per_batch must be >= max_chars_per_text")
        if self.engine_restart_max_delay_s < self.engine_restart_initial_delay_s:
            raise ValueError("engine_restart_max_delay_s must be >= engine_restart_initial_delay_s")
        names = [spec.name for spec in self.specialists]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate specialist names {duplicates}")
        return self


ENV_PREFIX = "MOE_"
# MOE_* variables read elsewhere (not gateway settings): the bundled registry's cache.
OTHER_VARIABLES = frozenset({"MOE_BUNDLED_REGISTRY", CACHE_ENV})  # MOE_* variables read elsewhere
SPECIALISTS_EXAMPLE = '[{"name": "en-de", "path": "/models/en-de", "directions": ["en-de"]}]'


class SettingsInputError(ValueError):
    """A MOE_* variable (or option) the gateway cannot use; the message names it and what it accepts."""


def _bounds(info: FieldInfo) -> str:
    words = {annotated_types.Ge: (">=", "ge"), annotated_types.Gt: (">", "gt"), annotated_types.Le: ("<=", "le"),
             annotated_types.Lt: ("<", "lt"), annotated_types.MinLen: ("characters >=", "min_length")}
    parts = []
    for m in info.metadata:
        for cls, (op, attr) in words.items():
            if isinstance(m, cls):
                parts.append(f"{op} {getattr(m, attr)}")
    return " and ".join(parts)


def accepted(info: FieldInfo) -> str:
    """What a setting accepts, in words: 'an integer >= 0 and <= 65535', "'any' or 'all'", ..."""
    kind = info.annotation
    optional = False
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional, kind = len(args) < len(typing.get_args(kind)), args[0]
    bounds = _bounds(info)
    if typing.get_origin(kind) is Literal:
        text = " or ".join(repr(v) for v in typing.get_args(kind))
    elif kind is bool:
        text = "true or false"
    elif kind is int:
        text = "an integer" + (f" {bounds}" if bounds else "")
    elif kind is float:
        text = "a number" + (f" {bounds}" if bounds else "")
    elif kind is Path:
        text = "a folder path"
    elif typing.get_origin(kind) is list and typing.get_args(kind) == (SpecialistSpec,):
        text = f"a JSON list of specialists, e.g. {SPECIALISTS_EXAMPLE}"
    elif typing.get_origin(kind) is list:
        text = 'a JSON list of strings, e.g. ["a", "b"]'
    else:
        text = "a string" + (f" of at least {bounds}" if bounds else "")
    return text + (" (or empty: none)" if optional else "")


def variable(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


assert variable("registry_dir") == REGISTRY_ENV, "the registry CLI and the gateway read one variable"


def explain(error: ValidationError, environ: Mapping[str, str]) -> str:
    """One line per invalid setting: the MOE_* variable (when it came from the environment), the value, what
    went wrong and what the setting accepts."""
    fields = Settings.model_fields
    lines = []
    for e in error.errors():
        loc = [str(part) for part in e.get("loc", ())]
        name = loc[0] if loc else ""
        where = f"{variable(name)}" if variable(name) in environ else (name or "settings")
        detail = ".".join(loc[1:])
        value = e.get("input")
        shown = f"={value!r}" if not detail and not isinstance(value, dict) else ""
        msg = e.get("msg", "").removeprefix("Value error, ")
        line = f"{where}{shown}: {f'{detail}: ' if detail else ''}{msg}"
        if name in fields:
            line += f"; accepts {accepted(fields[name])}"
        lines.append(line)
    return "invalid settings:\n  " + "\n  ".join(lines)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """MOE_* variables that are no setting (a typo would otherwise be ignored), with the closest setting."""
    known = {variable(name) for name in Settings.model_fields} | OTHER_VARIABLES
    out = []
    for key in sorted(environ):
        if key in RETIRED_REGISTRY_VARIABLES:
            out.append(f"{key} is no longer read: set {REGISTRY_ENV}")
        elif key.startswith(ENV_PREFIX) and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            out.append(f"{key} is not a setting" + (f" (did you mean {close[0]}?)" if close else ""))
    return out


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """``Settings`` from the MOE_* environment and ``overrides`` (command-line options); a bad or unknown
    variable raises ``SettingsInputError`` naming it and what it accepts."""
    environ = os.environ if environ is None else environ
    problems = unknown_variables(environ)
    if problems:
        names = ", ".join(sorted(variable(n) for n in Settings.model_fields))
        raise SettingsInputError("unknown settings: " + "; ".join(problems) + f". Settings: {names}")
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise SettingsInputError(explain(e, environ)) from None
    except _SourceError as e:  # a JSON setting that is not JSON
        match = re.search(r'field "(\w+)"', str(e))
        name = match.group(1) if match else ""
        cause = f": {e.__cause__}" if e.__cause__ else ""
        what = f"; accepts {accepted(Settings.model_fields[name])}" if name in Settings.model_fields else ""
        where = variable(name) if name else "a MOE_* variable"
        raise SettingsInputError(f"{where} is not valid JSON{cause}{what}") from None
