"""The `calibrate` job: route translation prompts through a model and save its routing statistics."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from transformers import AutoTokenizer

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.checkpoint import read_config, resolve_model
from moe_specialists.models.plan import base_ref
from moe_specialists.models.pruned import load_causal_lm
from moe_specialists.pruning.collect import collect_transformers
from moe_specialists.pruning.config import CommaList, Device, DType, JobConfig, ModelRef
from moe_specialists.pruning.data import Orientation, available_languages, calibration_sequences, directions_for


class CalibrationConfig(JobConfig):
    """Collect routing statistics of ``model`` translating FLORES-style ``data_dir/split`` passages between
    ``pivot`` and each of ``languages`` (``direction`` to/from/both), plus plain passages for the divergence."""

    model: ModelRef
    out: Path  # the statistics (.safetensors)
    languages: CommaList = Field(min_length=1)
    data_dir: Path = Path("../shared/data/flores200")
    direction: Orientation = "to"
    split: str = "dev"
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    reap: bool = True
    generate: bool = False  # route the model's own greedy translation instead of the reference
    max_new_tokens: int = Field(256, ge=1)
    revision: str | None = None
    dtype: DType = "float32"
    device: Device = "cpu"
    pivot: str = "en"

    @model_validator(mode="after")
    def _pairs(self) -> CalibrationConfig:
        directions_for(self.languages, self.direction, self.pivot)  # known languages, at least one pair
        return self


def check_calibration_request(config: CalibrationConfig, model_dir: Path) -> None:
    """Refuse what needs the model folder or the data before loading anything."""
    adapter_for(read_config(model_dir))  # supported family
    pairs = directions_for(config.languages, config.direction, config.pivot)
    have = available_languages(config.data_dir, config.split)
    missing = sorted({lang for pair in pairs for lang in pair} - set(have))
    if missing:
        raise ValueError(f"no {config.split} data for {missing} in {config.data_dir}; available: {have}")


def calibrate(config: CalibrationConfig) -> Path:
    """Collect the statistics of ``config`` (see ``CalibrationConfig``) and save them to ``config.out``; the
    statistics' header records the config."""
    c = config
    model_dir, revision = resolve_model(c.model, c.revision)
    check_calibration_request(c, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lm = load_causal_lm(model_dir, c.dtype, c.device)
    base = base_ref(model_dir, id=c.model, revision=revision).model_dump()
    sequences = calibration_sequences(tokenizer, c.data_dir, c.languages, c.direction, c.split, c.limit, c.pivot)
    stats = collect_transformers(
        lm,
        tokenizer,
        sequences,
        batch_size=c.batch_size,
        reap=c.reap,
        generate=c.generate,
        max_new_tokens=c.max_new_tokens,
        header={"base": base, "split": c.split, "config": c.model_dump(mode="json")},
    )
    return stats.save(c.out)
