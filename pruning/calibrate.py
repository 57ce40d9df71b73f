"""The `calibrate` job: route translation prompts through a model and save its routing statistics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from transformers import AutoTokenizer

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.checkpoint import read_config, resolve_model
from moe_specialists.models.generation import Backend, check_vllm_can_serve, require_vllm
from moe_specialists.models.plan import base_ref
from moe_specialists.models.pruned import load_causal_lm
from moe_specialists.pruning.collect import collect_transformers
from moe_specialists.pruning.config import CommaList, DataRef, Device, DType, JobConfig, ModelRef
from moe_specialists.pruning.data import (
    DEFAULT_DATA,
    CalibrationSequence,
    Orientation,
    Routing,
    calibration_sequences,
    directions_for,
    read_parallel,
)
from moe_specialists.pruning.stats import RoutingStats

# sequences per forward pass (transformers) or per vLLM generate call (the engine schedules them itself)
DEFAULT_BATCH_SIZE: dict[str, int] = {"transformers": 8, "vllm": 256}


class CalibrationConfig(JobConfig):
    """Collect routing statistics of ``model`` translating ``split`` passages of ``data_dir`` (``pruning.data``:
    FLORES+ from the hub, the shipped sample or a folder) between
    ``pivot`` and each of ``languages`` (``direction`` to/from/both), plus plain passages for the divergence.

    ``backend``: "transformers" (forward hooks; every score, REAP included; on ``device``) or "vllm" (hooks
    inside the vLLM engine while it generates: routing mass and frequency, no REAP; the path for 20B+ bases,
    ``tensor_parallel_size`` GPUs). ``routing``: "generated" routes the model's own greedy translation (the
    paper's choice), "reference" the FLORES reference by teacher forcing (one forward pass: faster)."""

    model: ModelRef
    out: Path  # the statistics (.safetensors)
    languages: CommaList = Field(min_length=1)
    data_dir: DataRef = DEFAULT_DATA
    direction: Orientation = "to"
    split: str = "dev"
    limit: int | None = Field(None, ge=1)
    backend: Backend = "transformers"
    batch_size: int | None = Field(None, ge=1)  # None: DEFAULT_BATCH_SIZE of the backend
    tensor_parallel_size: int = Field(1, ge=1)  # vllm only
    reap: bool | None = None  # None: on with transformers, off with vllm (which cannot collect it)
    routing: Routing = "reference"
    max_new_tokens: int = Field(256, ge=1)  # routing "generated" only
    revision: str | None = None
    dtype: DType = "float32"
    device: Device = "cpu"  # transformers only: vLLM picks its own platform
    pivot: str = "en"

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "generate" in data:
            raise ValueError(
                "generate was replaced by routing: 'routing: generated' (the model's own translation) or "
                "'routing: reference' (teacher forcing on the reference)"
            )
        return data

    @model_validator(mode="after")
    def _settings(self) -> CalibrationConfig:
        directions_for(self.languages, self.direction, self.pivot)  # known languages, at least one pair
        if self.reap is None:
            self.reap = self.backend == "transformers"
        if self.backend == "vllm":
            if self.reap:
                raise ValueError(
                    "REAP needs the transformers backend (it runs every expert on its tokens; the vLLM collector "
                    "records routing mass and frequency only): leave out --reap, or use --backend transformers"
                )
            if ":" in self.device:
                raise ValueError(
                    f"--device {self.device}: the device is the transformers backend's; vLLM picks its own "
                    "platform and uses the GPUs in CUDA_VISIBLE_DEVICES (--tensor-parallel-size of them)"
                )
        elif self.tensor_parallel_size > 1:
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} needs --backend vllm (the transformers backend "
                "runs on one --device)"
            )
        if self.batch_size is None:
            self.batch_size = DEFAULT_BATCH_SIZE[self.backend]
        return self


def check_calibration_data(config: CalibrationConfig) -> None:
    """Every language of every direction in the data's split, line-aligned: refused before any model loads."""
    pairs = directions_for(config.languages, config.direction, config.pivot)
    read_parallel(config.data_dir, config.split, sorted({lang for pair in pairs for lang in pair}), config.limit)


def calibrate(config: CalibrationConfig) -> Path:
    """Collect the statistics of ``config`` (see ``CalibrationConfig``) and save them to ``config.out``; the
    statistics' header records the base, the split and the config (the same for both backends)."""
    c = config
    check_calibration_data(c)
    model_dir, revision = resolve_model(c.model, c.revision)
    adapter_for(read_config(model_dir))  # a supported family, before the tokenizer and the model load
    if c.backend == "vllm":
        require_vllm()
        check_vllm_can_serve(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = base_ref(model_dir, id=c.model, revision=revision).model_dump()
    sequences = calibration_sequences(tokenizer, c.data_dir, c.languages, c.direction, c.split, c.limit, c.pivot)
    header = {"base": base, "split": c.split, "config": c.model_dump(mode="json")}
    if c.backend == "vllm":
        stats = collect_in_vllm(c, model_dir, tokenizer, sequences, header)
    else:
        stats = collect_transformers(
            load_causal_lm(model_dir, c.dtype, c.device),
            tokenizer,
            sequences,
            batch_size=c.batch_size,
            reap=c.reap,
            routing=c.routing,
            max_new_tokens=c.max_new_tokens,
            header=header,
        )
    return stats.save(c.out)


def collect_in_vllm(
    config: CalibrationConfig,
    model_dir: Path,
    tokenizer: Any,
    sequences: list[CalibrationSequence],
    header: dict[str, Any],
) -> RoutingStats:
    """``collect_vllm`` on a statistics engine (``stats_engine_args``) of ``model_dir``, shut down on exit."""
    from moe_specialists.models.generation import VllmGenerator
    from moe_specialists.pruning.collect_vllm import collect_vllm, stats_engine_args

    c = config
    engine = {**stats_engine_args(), "tensor_parallel_size": c.tensor_parallel_size}
    with VllmGenerator(model_dir, dtype=c.dtype, **engine) as generator:
        return collect_vllm(
            generator.llm,
            tokenizer,
            sequences,
            batch_size=c.batch_size,
            routing=c.routing,
            max_new_tokens=c.max_new_tokens,
            header=header,
            end_ids=generator.end_ids,
        )


def calibrated_for(
    model: Any, pairs: list[tuple[str, str]], out: Path, data_dir: Any, limit: int, dtype: str, device: str,
    log: Callable[[str], None] = print,
) -> Path:
    """Statistics at ``out`` covering ``pairs``: the file there when it does, else a calibration (transformers,
    REAP and mean outputs on) on the first ``limit`` dev passages of each pair, with the pivot they share (en
    when present) and the orientation they ask (to / from / both)."""
    directions = [f"{a}-{b}" for a, b in pairs]
    if out.is_file() and set(RoutingStats.load(out).groups) >= set(directions):
        log(f"statistics: {out} (calibrated before)")
        return out
    pivot = "en" if any("en" in p for p in pairs) else pairs[0][0]
    if any(pivot not in p for p in pairs):
        raise ValueError(f"pairs calibrated together share one pivot; {directions} have none in common: calibrate "
                         "them (`calibrate`) and pass the statistics")
    sides = {"to" if a == pivot else "from" for a, _ in pairs}
    direction = sides.pop() if len(sides) == 1 else "both"
    languages = sorted({x for p in pairs for x in p} - {pivot})
    log(f"statistics: calibrating {model} on {languages} ({direction} {pivot}), {limit} dev passages each, "
        f"into {out}")
    return calibrate(CalibrationConfig(model=model, out=out, languages=languages, direction=direction, pivot=pivot,
                                       data_dir=data_dir, split="dev", limit=limit, dtype=dtype, device=device))
