"""What the job configs share: unknown keys refused, comma-separated lists, dtypes, devices, YAML files.

Each job (``calibrate``, ``recover``, ``evaluate``, ``sweep``) takes ONE config, a pydantic model defined
beside it whose validators refuse impossible settings before any model loads, with a message that says how
to fix them. The CLI builds it from a YAML file (``--config``) and its options (options override the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from moe_specialists.models.errors import describe_validation


def comma_list(value: Any) -> Any:
    """"de, fr" -> ["de", "fr"]; lists pass through."""
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    return value


def _str_path(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


CommaList = Annotated[list[str], BeforeValidator(comma_list)]
CommaInts = Annotated[list[int], BeforeValidator(comma_list)]
ModelRef = Annotated[str, BeforeValidator(_str_path)]  # a local folder or a hub id
DataRef = Annotated[str, BeforeValidator(_str_path)]  # parallel data: "flores+", "sample" or a folder (pruning.data)
DType = Literal["float32", "bfloat16", "float16", "float64"]
ExpertsImplementation = Literal["eager", "batched_mm", "grouped_mm"]


def check_device(value: str) -> str:
    """A torch device this machine has (ValueError saying what to use otherwise)."""
    import torch

    try:
        device = torch.device(value)
    except RuntimeError as e:
        raise ValueError(f"{value!r} is not a torch device; e.g. cpu, cuda, cuda:1") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{value!r}: torch {torch.__version__} sees no CUDA GPU on this machine; use cpu")
    return value


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


Device = Annotated[str, AfterValidator(check_device)]  # a torch device this machine has


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML (or JSON) config file: option names (``-`` or ``_``) to values."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read the config file {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file is a YAML mapping of option names to values, e.g. 'limit: 100'")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def describe(e: ValidationError) -> str:
    """One line: every problem as ``field: message`` (``describe_validation``, the whole config ``config``)."""
    return describe_validation(e, where="config")
