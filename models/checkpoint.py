"""Reading checkpoints without loading them: resolving hub ids, shard lists, safetensors headers, summaries."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moe_specialists.models.file_hashes import FileHashes, default_cache_file

if TYPE_CHECKING:
    from moe_specialists.models.adapters import FamilyAdapter

INDEX_NAME = "model.safetensors.index.json"
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
}


# The bundled tiny translator by the id its plans record: found from any working directory (a folder of that
# relative path, when there is one, comes first).
BUNDLED_MODEL_ID = "models/tiny_translator"
BUNDLED_MODEL_FOLDER = Path(__file__).resolve().parent / "tiny_translator"


def resolve_model(ref: str | Path, revision: str | None = None) -> tuple[Path, str | None]:
    """A local folder as it is, the bundled translator by ``BUNDLED_MODEL_ID``, or a hub id downloaded (or
    found in the cache when HF_HUB_OFFLINE=1). Returns (folder, revision): the hub commit for hub ids."""
    path = Path(ref)
    if path.is_dir():
        return path, revision
    if str(ref) == BUNDLED_MODEL_ID:
        return BUNDLED_MODEL_FOLDER, revision
    if path.exists():
        raise ValueError(f"{ref} is a file; give a model folder or a hub id")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                str(ref), revision=revision, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]
            )
        )
    except Exception as e:  # network, auth, offline cache miss: say what was tried
        raise ValueError(f"{ref!r} is not a local folder and could not be fetched from the hub: {e}") from e
    return folder, folder.name


class NoConfigError(FileNotFoundError, ValueError):
    """A folder without config.json: a missing file, and a model argument that is not a model."""


def read_config(model_dir: Path, hint: str = "not a transformers model folder") -> dict[str, Any]:
    """config.json of a model folder; NoConfigError ``<folder> has no config.json: <hint>`` without one."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise NoConfigError(f"{model_dir} has no config.json: {hint}")
    return json.loads(path.read_text())


def is_mxfp4(config: Mapping[str, Any]) -> bool:
    """Whether a config says the experts are MXFP4 (gpt-oss as released): config.json, or a transformers
    config's ``to_dict()`` (which turns its quantization config object into a dict)."""
    return (config.get("quantization_config") or {}).get("quant_method") == "mxfp4"


def shard_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint (from the index when there is one)."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_NAME
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} has no *.safetensors weights")
    return files


def read_header_and_start(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets) and the file offset where its
    tensor data starts (8 + the header's length); no tensor data is read."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 <= n <= min(size - 8, 100_000_000):
            raise ValueError(f"{path} is not a safetensors file (header size {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is corrupt or not safetensors (header: {e})") from e
    header.pop("__metadata__", None)
    return header, 8 + n


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (``read_header_and_start`` without the offset)."""
    return read_header_and_start(path)[0]


def stored_parameters(name: str, shape: list[int]) -> int:
    """Parameters a stored tensor represents: MXFP4 ``*_blocks`` (uint8) pack two 4-bit values per byte,
    their ``*_scales`` are not parameters."""
    n = 1
    for s in shape:
        n *= s
    if name.endswith("_blocks"):
        return 2 * n
    if name.endswith("_scales"):
        return 0
    return n


def header_entries(model_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, header entry) of every tensor of a checkpoint, shard by shard; no tensor data is read."""
    for shard in shard_files(model_dir):
        yield from read_header(shard).items()


def weight_totals(
    entries: Iterable[tuple[str, dict[str, Any]]], share: Callable[[str, dict[str, Any]], float] | None = None
) -> tuple[int, int]:
    """(parameters, weight bytes) of safetensors header entries: parameters = sum of ``stored_parameters``,
    bytes = sum of ``data_offsets[1] - data_offsets[0]`` (headers and padding excluded). ``share(name, entry)``
    weighs each tensor (a fraction kept, or 0/1 to select; each term rounded); None counts all of each."""
    params = nbytes = 0
    for name, info in entries:
        p, (start, end) = stored_parameters(name, info["shape"]), info["data_offsets"]
        if share is None:
            params, nbytes = params + p, nbytes + end - start
        else:
            s = share(name, info)
            params, nbytes = params + round(p * s), nbytes + round((end - start) * s)
    return params, nbytes


def checkpoint_summary(model_dir: Path, adapter: FamilyAdapter | None = None, hashes: bool = True) -> dict[str, Any]:
    """Parameters and bytes of a checkpoint, per-expert parameters of each MoE layer, and file hashes."""
    from moe_specialists.models.adapters import adapter_for  # torch: only when a checkpoint is summarised

    config = read_config(model_dir)
    adapter = adapter or adapter_for(config)
    counts = adapter.experts_per_layer(config)
    entries = list(header_entries(model_dir))
    total, weight_bytes = weight_totals(entries)
    expert_params = [0] * len(counts)  # parameters of all experts (+ router rows) of each decoder layer
    for name, info in entries:
        if (role := adapter.tensor_role(name)) is not None:
            expert_params[role.layer] += stored_parameters(name, info["shape"])
    per_expert = [expert_params[i] // counts[i] if counts[i] else 0 for i in range(len(counts))]
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix == ".safetensors" or p.name == "config.json")
    return {
        "family": adapter.name,
        "parameters": total,
        "weight_bytes": weight_bytes,
        "experts_per_layer": counts,
        "parameters_per_expert": per_expert,
        "files": known_sha256(files) if hashes else {},
    }


def known_sha256(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of each file by name, through the hash cache (``models.file_hashes``): read once per file."""
    hashes = FileHashes(default_cache_file())
    try:
        return {p.name: hashes.sha256(p) for p in paths}
    finally:
        hashes.save()


@contextlib.contextmanager
def building_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh temp folder beside ``out_dir`` to write into; on success it replaces ``out_dir`` (a rename, so
    readers never see half a checkpoint), on any failure it is deleted and ``out_dir`` is left as it was."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _stem(name: str) -> str:
    return name.removesuffix("_blocks").removesuffix("_scales")


def check_same_tensors(saved: Path, reference: Path, same_storage: bool = True) -> None:
    """Refuse a written checkpoint whose tensors are not the reference's: every name (with ``same_storage``
    its shape too; otherwise MXFP4 ``*_blocks``/``*_scales`` and plain tensors count as one name, with the
    same size on dim 0: the expert count). The error names what is missing or wrong."""
    def tensors(folder: Path) -> dict[str, list[int]]:
        return {k: v["shape"] for k, v in header_entries(folder)}

    got, want = tensors(saved), tensors(reference)
    if not same_storage:
        got = {_stem(k): v for k, v in got.items()}
        want = {_stem(k): v for k, v in want.items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want)
                   if (got[k] != want[k] if same_storage else got[k][:1] != want[k][:1]))
    problems = [f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''} ({len(missing)})"] if missing else []
    problems += [f"unexpected {extra[:6]} ({len(extra)})"] if extra else []
    problems += [f"{k}: shape {got[k]}, expected {want[k]}" for k in wrong[:6]]
    if problems:
        raise ValueError(f"{saved} does not hold the tensors of {reference}: " + "; ".join(problems))
