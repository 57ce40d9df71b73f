"""Checkpoint reading without loading: the one weight-bytes sum (hand-counted), config.json, MXFP4 detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GptOssConfig, Mxfp4Config, Qwen3MoeConfig

from moe_specialists.models.checkpoint import NoConfigError, header_entries, is_mxfp4, read_config, weight_totals

ENTRIES = [
    ("a.weight", {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}),  # 6 parameters, 24 bytes
    ("experts.down_proj_blocks", {"dtype": "U8", "shape": [2, 3], "data_offsets": [24, 30]}),  # 2 a byte: 12
    ("experts.down_proj_scales", {"dtype": "U8", "shape": [2], "data_offsets": [30, 32]}),  # not parameters
]


def test_weight_totals_by_hand() -> None:
    assert weight_totals(ENTRIES) == (6 + 12 + 0, 24 + 6 + 2)
    assert weight_totals([]) == (0, 0)
    # half of the experts kept, a third of "a" (each term rounded): 6/3 = 2 + 12/2 = 6; 24/3 = 8 + 3 + 1
    half = {"a.weight": 1 / 3, "experts.down_proj_blocks": 0.5, "experts.down_proj_scales": 0.5}
    assert weight_totals(ENTRIES, lambda name, _: half[name]) == (8, 12)
    assert weight_totals(ENTRIES, lambda name, _: name.startswith("experts.")) == (12, 8)  # a 0/1 selection


def test_header_entries_of_a_saved_checkpoint(tmp_path: Path) -> None:
    save_file({"x": torch.zeros(2, 3), "y": torch.zeros(5, dtype=torch.uint8)}, tmp_path / "model.safetensors")
    names = {name: info["shape"] for name, info in header_entries(tmp_path)}
    assert names == {"x": [2, 3], "y": [5]}  # __metadata__ is not a tensor
    assert weight_totals(header_entries(tmp_path)) == (6 + 5, 4 * 6 + 5)


def test_read_config_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    assert read_config(tmp_path) == {"model_type": "qwen3_moe"}
    with pytest.raises(NoConfigError, match="has no config.json: not a transformers model folder") as err:
        read_config(tmp_path / "nothing")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match="has no config.json: a folder of weights"):
        read_config(tmp_path / "nothing", "a folder of weights")


def test_is_mxfp4_reads_config_json_and_transformers_configs() -> None:
    assert is_mxfp4({"quantization_config": {"quant_method": "mxfp4"}})
    assert not is_mxfp4({"quantization_config": {"quant_method": "fp8"}})
    assert not is_mxfp4({}) and not is_mxfp4({"quantization_config": None})
    assert is_mxfp4(GptOssConfig(quantization_config={"quant_method": "mxfp4"}).to_dict())
    config = GptOssConfig()
    config.quantization_config = Mxfp4Config()  # as transformers keeps it after loading
    assert is_mxfp4(config.to_dict())
    assert not is_mxfp4(Qwen3MoeConfig().to_dict())
