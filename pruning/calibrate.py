"""The `calibrate` job: route translation prompts through a model and save its routing statistics."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.checkpoint import read_config, resolve_model
from moe_specialists.models.plan import base_ref
from moe_specialists.models.pruned import load_causal_lm
from moe_specialists.pruning.collect import collect_transformers
from moe_specialists.pruning.data import Direction, available_languages, calibration_sequences, directions_for


def check_calibration_request(
    model_dir: Path, data_dir: str | Path, split: str, languages: list[str], direction: Direction, pivot: str
) -> None:
    """Refuse impossible requests before loading anything."""
    adapter_for(read_config(model_dir))  # supported family
    pairs = directions_for(languages, direction, pivot)
    have = available_languages(data_dir, split)
    missing = sorted({lang for pair in pairs for lang in pair} - set(have))
    if missing:
        raise ValueError(f"no {split} data for {missing} in {data_dir}; available: {have}")


def calibrate(
    model: str | Path,
    data_dir: str | Path,
    languages: list[str],
    out: str | Path,
    direction: Direction = "to",
    split: str = "dev",
    limit: int | None = None,
    batch_size: int = 8,
    reap: bool = True,
    generate: bool = False,
    max_new_tokens: int = 256,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    pivot: str = "en",
) -> Path:
    """Collect routing statistics of ``model`` translating FLORES-style ``data_dir/split`` passages between
    ``pivot`` and each of ``languages`` (direction to/from/both), plus plain passages for the divergence."""
    model_dir, revision = resolve_model(model, revision)
    check_calibration_request(model_dir, data_dir, split, languages, direction, pivot)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lm = load_causal_lm(model_dir, dtype, device)
    base = base_ref(model_dir, id=str(model), revision=revision).model_dump()
    sequences = calibration_sequences(tokenizer, data_dir, languages, direction, split, limit, pivot)
    stats = collect_transformers(
        lm,
        tokenizer,
        sequences,
        batch_size=batch_size,
        reap=reap,
        generate=generate,
        max_new_tokens=max_new_tokens,
        header={"base": base, "split": split},
    )
    return stats.save(out)
