"""Apply a plan: stream the base checkpoint tensor by tensor and write the specialist (physical slicing).

Router rows and experts stacked on dim 0 (GPT-OSS gate_up_proj / down_proj / biases / MXFP4 blocks and
scales, fused Qwen3 tensors) keep rows ``kept``; per-expert tensors (Qwen3 ``mlp.experts.<j>.*``) of kept
experts are renumbered 0..c_l-1; every other tensor is copied unchanged. Rows stacked on dim 0 are contiguous
byte ranges of a safetensors file, so the specialist's shards are written from byte ranges of the base's
(``os.copy_file_range``: the kernel copies, nothing but the headers passes through Python), whatever the
tensor or shard size. MXFP4 experts stay MXFP4.

Before anything is written, every shard's header is checked against its file size (a truncated download is
refused with the file's name), the config against the plan, and the weights' storage against the plan's.
The specialist is written to a temporary folder and renamed into place, so a failure leaves nothing behind.
Besides the weights it gets config.json (per-layer counts, ``auto_map`` to the copied ``modeling_pruned.py``
so stock transformers loads it with ``trust_remote_code=True``), plan.json, its own model card (README.md),
the base's tokenizer and other small files (not the base's card or eval_results.json), all mode 0644.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_specialists.models.adapters import FamilyAdapter, adapter_for
from moe_specialists.models.checkpoint import (
    DTYPE_BYTES,
    INDEX_NAME,
    building_dir,
    is_mxfp4,
    known_sha256,
    read_config,
    read_header_and_start,
    resolve_model,
    shard_files,
    weight_totals,
)
from moe_specialists.models.model_card import model_card
from moe_specialists.models.plan import Plan, router_order

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
PARENT_ONLY = ("README.md", "eval_results.json")  # the parent's card and scores describe the parent
MODELING_NAME = "modeling_pruned.py"
FILE_MODE = 0o644
DIR_MODE = 0o755


@dataclass(frozen=True)
class TensorCopy:
    """One tensor of a specialist shard: its name, dtype and shape there, and the byte ranges
    (absolute offset, length) of the base shard it is made of, in order, or its bytes (``data``: a tensor the
    base does not have, e.g. substitutes)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]
    data: bytes = b""

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.data else sum(n for _, n in self.ranges)


@dataclass(frozen=True)
class ShardLayout:
    path: Path
    data_start: int  # file offset of the tensor data (8 + header length)
    tensors: dict[str, dict[str, Any]]  # safetensors header entries (dtype, shape, data_offsets)


def read_shard_layout(path: Path) -> ShardLayout:
    """The header of a safetensors shard, checked against the file: every tensor's byte range must have the
    size its dtype and shape say and lie inside the file (a truncated file is refused, naming it)."""
    size = path.stat().st_size if path.is_file() else None
    if size is None:
        raise ValueError(f"{path.name} is listed in the checkpoint's index but missing from {path.parent}")
    header, data_start = read_header_and_start(path)
    for name, info in header.items():
        begin, end = info["data_offsets"]
        count = 1
        for s in info["shape"]:
            count *= s
        if info["dtype"] not in DTYPE_BYTES or end - begin != count * DTYPE_BYTES[info["dtype"]]:
            raise ValueError(f"{path.name}: corrupt header entry for {name} ({info})")
        if data_start + end > size:
            raise ValueError(
                f"{path.name} is truncated: tensor {name} ends at byte {data_start + end} but the file has "
                f"{size} bytes (an interrupted download? fetch the file again)"
            )
    return ShardLayout(path, data_start, header)


def row_ranges(start: int, row_bytes: int, rows: list[int]) -> tuple[tuple[int, int], ...]:
    """Byte ranges of rows ``rows`` (in that order) of a tensor stored from ``start``, consecutive rows merged:
    row r is [start + r * row_bytes, start + (r + 1) * row_bytes)."""
    ranges: list[tuple[int, int]] = []
    for r in rows:
        offset = start + r * row_bytes
        if ranges and ranges[-1][0] + ranges[-1][1] == offset:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + row_bytes)
        else:
            ranges.append((offset, row_bytes))
    return tuple(ranges)


def slice_entry(
    adapter: FamilyAdapter, name: str, info: dict[str, Any], data_start: int, kept_by_layer: dict[int, list[int]],
    substitute: bool = False,
) -> TensorCopy | None:
    """What the specialist stores for one base tensor, or None when it belongs to a dropped expert (a
    ``substitute`` router keeps every row: ``plan.router_order``, as ``plan_loading.slice_tensor``)."""
    begin, end = info["data_offsets"]
    shape, start = tuple(info["shape"]), data_start + begin
    role = adapter.tensor_role(name)
    if role is None or role.layer not in kept_by_layer:
        return TensorCopy(name, info["dtype"], shape, ((start, end - begin),))
    kept = kept_by_layer[role.layer]
    if role.kind == "router" and substitute:
        kept = router_order(kept, shape[0])
    if role.kind in ("router", "packed"):
        row_bytes = (end - begin) // shape[0]
        return TensorCopy(name, info["dtype"], (len(kept), *shape[1:]), row_ranges(start, row_bytes, kept))
    if role.expert not in kept:
        return None
    new = adapter.renumber_expert(name, kept.index(role.expert))
    return TensorCopy(new, info["dtype"], shape, ((start, end - begin),))


def safetensors_header(tensors: list[TensorCopy]) -> bytes:
    """The 8-byte length + JSON header of a safetensors file holding ``tensors`` in that order, padded with
    spaces so the data starts 8-byte aligned (as safetensors writes it)."""
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        entries[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


PREFETCH_BYTES = 1 << 28  # how far ahead of the copy the kernel is asked to read (posix_fadvise WILLNEED)
LINUX_IO = hasattr(os, "copy_file_range") and hasattr(os, "posix_fadvise")  # elsewhere: buffered, no advice
BUFFERED_CHUNK = 1 << 26  # bytes per piece where there is no kernel copy


def willneed_bytes(fd: int, sys_block: Path = Path("/sys/dev/block")) -> int:
    """The most one ``posix_fadvise(WILLNEED)`` on ``fd`` reads: Linux cuts every call to
    max(read_ahead_kb, max_sectors_kb) of the file's block device (``force_page_cache_ra``; 8 MiB here) and
    silently drops the rest. 128 KiB (the smallest default read-ahead) where sysfs does not say: a file
    system without one block device (tmpfs, overlayfs, btrfs)."""
    st_dev = os.fstat(fd).st_dev
    device = sys_block / f"{os.major(st_dev)}:{os.minor(st_dev)}"
    for queue in (device / "queue", device / ".." / "queue"):  # a whole disk, or a partition of one
        try:
            kb = max(int((queue / name).read_text()) for name in ("read_ahead_kb", "max_sectors_kb"))
        except (OSError, ValueError):
            continue
        if kb > 0:
            return kb * 1024
    return 128 * 1024


def copy_once(src: int, dst: int, n: int, at: int) -> int:
    """Append up to ``n`` bytes of ``src`` from offset ``at`` to ``dst``; returns how many: in the kernel on
    Linux (``copy_file_range``), through a buffer elsewhere or where the kernel refuses (another file system)."""
    if LINUX_IO:
        try:
            return os.copy_file_range(src, dst, n, at)
        except OSError:
            pass
    return os.write(dst, os.pread(src, n, at))


def copy_ranges(src: int, dst: int, ranges: list[tuple[int, int]], chunk: int | None = None) -> None:
    """Append byte ranges of file ``src`` to file ``dst`` (descriptors): in the kernel where it can, in pieces
    of ``chunk`` bytes (default: ``willneed_bytes(src)`` on Linux, ``BUFFERED_CHUNK`` elsewhere).
    The next ``PREFETCH_BYTES`` of pieces are announced to the kernel (WILLNEED, one call per piece: a larger
    call would be cut) ahead of the copy, so the disk reads exactly the kept bytes, in large requests; without
    it the kernel's own readahead restarts at every range and reads on into the dropped experts between them
    (docs/results/full-size.md)."""
    if chunk is None:
        chunk = willneed_bytes(src) if LINUX_IO else BUFFERED_CHUNK
    pieces = [(o + d, min(chunk, n - d)) for o, n in ranges for d in range(0, n, chunk)]
    advised, ahead = 0, 0  # pieces[:advised] announced; bytes announced and not yet copied
    for i, (offset, length) in enumerate(pieces):
        while LINUX_IO and advised < len(pieces) and ahead < PREFETCH_BYTES:
            os.posix_fadvise(src, *pieces[advised], os.POSIX_FADV_WILLNEED)
            ahead += pieces[advised][1]
            advised += 1
        done = 0
        while done < length:
            copied = copy_once(src, dst, length - done, offset + done)
            if copied <= 0:
                raise ValueError(f"unexpected end of the base checkpoint at byte {offset + done}")
            done += copied
        if i < advised:
            ahead -= length


def write_shard(src: Path, out: Path, tensors: list[TensorCopy]) -> int:
    """Write ``tensors`` (byte ranges of ``src``, then those given by their bytes) as the safetensors file
    ``out``; returns the data bytes."""
    copied = [t for t in tensors if not t.data]
    given = [t for t in tensors if t.data]
    with open(src, "rb") as fin, open(out, "wb") as fout:
        fout.write(safetensors_header(copied + given))
        fout.flush()
        copy_ranges(fin.fileno(), fout.fileno(), [r for t in copied for r in t.ranges])
        for t in given:
            fout.write(t.data)
    return sum(t.nbytes for t in tensors)


def substitutes_copies(adapter: FamilyAdapter, constants: dict[int, Any], layers: set[int]) -> list[TensorCopy]:
    """The constants [s_l, H] float32 of ``layers`` as tensors ``adapter.substitutes_tensor(l)``, given by bytes."""
    return [TensorCopy(adapter.substitutes_tensor(lay), "F32", tuple(t.shape), (),
                       t.contiguous().numpy().astype("<f4").tobytes())
            for lay, t in sorted(constants.items()) if lay in layers]


def check_substitutes(folder: Path, weight_map: dict[str, str], adapter: FamilyAdapter,
                      constants: dict[int, Any]) -> None:
    """Every substitutes tensor reads back from the written shards bit for bit (safetensors' own reader)."""
    from safetensors import safe_open

    for lay, t in constants.items():
        name = adapter.substitutes_tensor(lay)
        with safe_open(folder / weight_map[name], "pt") as f:
            if not f.get_tensor(name).equal(t):
                raise RuntimeError(f"{weight_map[name]}: {name} does not read back as written")


def modeling_file() -> Path:
    """models/modeling_pruned.py, found without importing it (it imports transformers' model code)."""
    spec = importlib.util.find_spec("moe_specialists.models.modeling_pruned")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin)


def check_plan_matches(plan: Plan, config: dict, adapter: FamilyAdapter) -> None:
    """Refuse a plan made for another model, with what differs."""
    problems = []
    if plan.base.family != adapter.name:
        problems.append(f"family {plan.base.family!r} vs {adapter.name!r}")
    if plan.base.experts_per_layer != adapter.experts_per_layer(config):
        problems.append(f"experts per layer {plan.base.experts_per_layer} vs {adapter.experts_per_layer(config)}")
    if plan.base.top_k != adapter.top_k(config):
        problems.append(f"top-k {plan.base.top_k} vs {adapter.top_k(config)}")
    if problems:
        raise ValueError(f"this plan was made for another model ({plan.base.id}): " + "; ".join(problems))


def storage_format(config: dict, layouts: list[ShardLayout]) -> str:
    """"mxfp4" or "dense" (bf16/fp32 experts), refusing a checkpoint whose config and tensors disagree."""
    blocks = any(n.endswith("_blocks") for lay in layouts for n in lay.tensors)
    says = is_mxfp4(config)
    if blocks != says:
        raise ValueError(
            f"config.json {'says' if says else 'does not say'} quant_method mxfp4 but the tensors "
            f"{'have no' if says else 'have'} MXFP4 *_blocks: a mixed checkpoint, refused"
        )
    return "mxfp4" if blocks else "dense"


def check_same_storage(plan: Plan, weight_bytes: int, parameters: int, fmt: str, verify: bool) -> None:
    """A plan for the same model stored another way (MXFP4 vs bf16, another dtype) keeps the same experts;
    with ``verify`` it is refused with that reason (the file hashes would differ anyway)."""
    if not verify or not plan.base.weight_bytes or plan.base.weight_bytes == weight_bytes:
        return
    if plan.base.parameters == parameters:
        raise ValueError(
            f"the plan was made for {plan.base.id}, which stores these {parameters} parameters in "
            f"{plan.base.weight_bytes} bytes; this checkpoint ({fmt}) stores them in {weight_bytes} bytes: the same "
            "model in another storage format (MXFP4 vs bf16, or another dtype). The experts to keep are the same: "
            "apply with verify=False to slice this checkpoint (plan.json will record it as the base)."
        )


def apply_plan(
    plan: Plan | str | Path,
    out_dir: str | Path,
    base: str | Path | None = None,
    revision: str | None = None,
    verify: bool = True,
    overwrite: bool = False,
    quality: dict | None = None,
) -> Path:
    """Write the specialist of ``plan`` applied to ``base`` (default: the plan's base id) into ``out_dir``.
    ``verify``: the base's files must be the ones the plan was made for (sha256, each file read once per machine:
    ``models.file_hashes``; none for a hub-cached base); ``quality``: measured
    scores for the model card."""
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; choose another folder or pass overwrite")
    base_dir, revision = resolve_model(base or plan.base.id, revision or plan.base.revision)
    config = read_config(base_dir)
    adapter = adapter_for(config)
    adapter.check_prunable(config)
    check_plan_matches(plan, config, adapter)
    kept_by_layer = dict(zip(plan.layers, plan.kept, strict=True))
    substitute = plan.recipe.dropped == "substitute"
    constants = plan.constants() if substitute else {}  # refused here when missing or changed
    layouts = [read_shard_layout(s) for s in shard_files(base_dir)]  # truncated files refused here
    fmt = storage_format(config, layouts)
    base_params, base_bytes = weight_totals(entry for lay in layouts for entry in lay.tensors.items())
    check_same_storage(plan, base_bytes, base_params, fmt, verify)
    if verify:
        actual = known_sha256(lay.path for lay in layouts if plan.base.files.get(lay.path.name))
        for name, sha in actual.items():
            if sha != plan.base.files[name]:
                raise ValueError(f"{base_dir / name} differs from the checkpoint the plan was made for "
                                 f"(sha256 mismatch)")
    elif plan.base.weight_bytes != base_bytes:  # another storage of the model: record what was sliced
        plan = plan.model_copy(update={"base": plan.base.model_copy(update={
            "id": str(base or plan.base.id), "weight_bytes": base_bytes,
            "files": known_sha256([*(lay.path for lay in layouts), base_dir / "config.json"]),
        })})

    with building_dir(out_dir) as tmp:
        weight_map: dict[str, str] = {}
        total_size = 0
        for lay in layouts:
            copies = [slice_entry(adapter, n, i, lay.data_start, kept_by_layer, substitute)
                      for n, i in lay.tensors.items()]
            copies = sorted((c for c in copies if c is not None), key=lambda c: c.ranges[0][0])
            if substitute:  # each layer's constants in the shard of its router
                routers = {r.layer for n in lay.tensors if (r := adapter.tensor_role(n)) and r.kind == "router"}
                copies += substitutes_copies(adapter, constants, routers)
            if copies:
                total_size += write_shard(lay.path, tmp / lay.path.name, copies)
                weight_map.update(dict.fromkeys((c.name for c in copies), lay.path.name))
        substituted = None
        if substitute:
            check_substitutes(tmp, weight_map, adapter, constants)
            substituted = [0] * len(plan.base.experts_per_layer)
            for lay, t in constants.items():
                substituted[lay] = t.shape[0]
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=1))
        pruned = adapter.pruned_config_dict(config, plan.experts_per_layer(), substituted)
        pruned["auto_map"] = {"AutoModelForCausalLM": f"{MODELING_NAME[:-3]}.{adapter.pruned_architecture}"}
        (tmp / "config.json").write_text(json.dumps(pruned, indent=1))
        shutil.copyfile(modeling_file(), tmp / MODELING_NAME)
        skip = {"config.json", INDEX_NAME, MODELING_NAME, *PARENT_ONLY}
        for item in Path(base_dir).iterdir():  # tokenizer, generation config, chat template, licence, ...
            if item.is_file() and item.suffix not in WEIGHT_SUFFIXES and item.name not in skip:
                shutil.copyfile(item, tmp / item.name)
        card = base_dir / "README.md"
        (tmp / "README.md").write_text(
            model_card(plan, card.read_text() if card.is_file() else None, total_size, fmt, quality)
        )
        plan.save(tmp / "plan.json")
        for item in tmp.iterdir():  # readable by others (e.g. a container's uid) whatever the umask
            item.chmod(FILE_MODE)
        tmp.chmod(DIR_MODE)
    return out_dir
