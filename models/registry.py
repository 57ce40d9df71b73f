"""Model registry: specialists and their metadata (SPEC.md section 2).

Layout of a registry root::

    <root>/entries/<name>.json   one SpecialistEntry per file (the registry proper)
    <root>/.lock                 fcntl lock taken by writers
    <root>/cache/<plan-hash>/    specialists materialised from base + plan (shared by the entries of a plan)
    <root>/hub/<name>/           specialists pulled from the hub

Storage: one JSON file per entry, written to a temporary file in the same folder, fsynced, then renamed over
the target (``os.replace``: atomic on POSIX), with an exclusive ``fcntl.flock`` around every write. Why not
SQLite: an entry is a small document read at gateway start and written a handful of times per specialist, so
a database buys nothing a rename does not already give (a reader sees the old file or the new one, never a
half), while plain files stay readable and diffable, are the same JSON that travels to the hub beside the
weights, and a damaged entry cannot take the others down. The lock serialises writers so that "add unless it
exists" is one step (concurrent adds never overwrite each other); readers take no lock. A writer killed
mid-write leaves only a ``.tmp-*`` file, which readers ignore and the next writer deletes.

Names are lowercase ASCII (``NAME_PATTERN``): no separators, no leading dot, no look-alike letters, at most 64
characters, so ``entries/<name>.json`` can never leave the registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moe_specialists.models.checkpoint import file_sha256, read_header, shard_files, stored_parameters
from moe_specialists.models.plan import Plan

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"  # no slashes, no '..' traversal, no leading dot
# The one registry of `registry ...`, `prune --register` and `serve`: this variable, else the default folder.
REGISTRY_ENV = "MOE_REGISTRY_DIR"
RETIRED_REGISTRY_VARIABLES = ("MOE_SPECIALISTS_REGISTRY",)  # read by the registry CLI before 2026-12
ENTRY_FILE = "specialist.json"  # the entry as it travels to the hub beside the weights
_NAME_RE = re.compile(NAME_PATTERN)


class Quality(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str  # "chrF", "BLEU", ...
    direction: str  # "en-de"
    score: float
    split: str = "devtest"
    num_sentences: int = 0


class SpecialistEntry(BaseModel):
    """One registered specialist (or a base model entry: ``plan`` is None and nothing is saved)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    base: str  # hub id or local path of the base model
    path: str  # local directory of the weights (materialised or loaded)
    family: str  # model_type: "qwen3_moe", "gpt_oss"
    plan: str | None = None  # path of plan.json (None for a base model)
    directions: list[str] = []  # served directions "en-de"; empty with languages = multilingual
    languages: list[str] = []  # a multilingual specialist serves every pair among these
    experts_per_layer: list[int] = []
    base_experts_per_layer: list[int] = []  # of the base model: experts kept / total = sum(above) / sum(this)
    parameters: int = 0
    weight_bytes: int = 0
    base_weight_bytes: int = 0
    quality: list[Quality] = []
    checksums: dict[str, str] = {}  # file name -> sha256
    created_at: datetime | None = None
    plan_hash: str | None = None  # cache key of a materialised specialist (``plan_hash(plan, base)``)
    source: str | None = None  # where the weights came from: "local", "materialised", "hub:<repo>@<rev>"

    @property
    def bytes_saved(self) -> int:
        return max(self.base_weight_bytes - self.weight_bytes, 0)


# ---------------------------------------------------------------- errors


class RegistryError(Exception):
    """Base of the registry's errors; ``str(e)`` is one line that says what is wrong and what exists."""


class InvalidNameError(RegistryError, ValueError):
    pass


class UnknownSpecialistError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateSpecialistError(RegistryError, ValueError):
    pass


class CorruptEntryError(RegistryError, ValueError):
    pass


class ChecksumError(RegistryError, ValueError):
    pass


def default_registry_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$MOE_REGISTRY_DIR``, else ``$XDG_CACHE_HOME/moe-specialists/registry`` (``~/.cache/...``). A retired
    variable is refused (ValueError naming the one to set), not silently ignored."""
    environ = os.environ if environ is None else environ
    check_registry_variables(environ)
    if environ.get(REGISTRY_ENV):
        return Path(environ[REGISTRY_ENV]).expanduser()
    cache = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return cache / "moe-specialists" / "registry"


def check_registry_variables(environ: Mapping[str, str]) -> None:
    for old in RETIRED_REGISTRY_VARIABLES:
        if old in environ:
            raise ValueError(f"{old} is no longer read: set {REGISTRY_ENV} instead (one registry folder for "
                             "`registry ...`, `prune --register` and `serve`)")


def validate_name(name: str) -> str:
    """``name`` if it is a valid specialist name, else InvalidNameError saying what is accepted."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid specialist name {name!r}: use 1-64 characters from a-z 0-9 . _ -, starting with a "
            "letter or digit (no slashes, no leading dot, ASCII only)"
        )
    return name


# ---------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a half."""
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _files(folder: Path) -> list[Path]:
    """Regular files under ``folder`` (recursively), skipping hidden files and folders (hub caches, temps)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and rel.name != ENTRY_FILE:
            out.append(p)
    return out


def checksums(folder: str | Path) -> dict[str, str]:
    """sha256 of every file of a specialist folder, keyed by its path relative to the folder."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in _files(folder)}


def verify_checksums(folder: str | Path, expected: dict[str, str]) -> None:
    """ChecksumError naming every missing or changed file."""
    folder = Path(folder)
    bad = [f for f, h in expected.items() if not (folder / f).is_file() or file_sha256(folder / f) != h]
    if bad:
        raise ChecksumError(f"{folder}: missing or changed files against the registered checksums: {bad}")


# ---------------------------------------------------------------- entries from folders


def weight_stats(folder: str | Path) -> tuple[int, int]:
    """(parameters, weight bytes) of a checkpoint from its safetensors headers alone (no tensor is read).
    Parameters = sum of element counts (MXFP4 blocks count 2 a byte, scales 0: ``stored_parameters``);
    weight bytes = sum of tensor data sizes ``data_offsets[1] - data_offsets[0]`` (headers excluded). A plan
    view (the base's shards linked) counts only its kept experts, as its sliced copy would."""
    config = _read_config(Path(folder))
    if "plan_kept_experts" in config:
        from moe_specialists.models.plan_loading import kept_weight_stats, view_kept

        return kept_weight_stats(Path(folder), view_kept(config))
    params = nbytes = 0
    for shard in shard_files(Path(folder)):
        for name, info in read_header(shard).items():
            params += stored_parameters(name, info["shape"])
            start, end = info["data_offsets"]
            nbytes += end - start
    return params, nbytes


def _read_config(folder: Path) -> dict[str, Any]:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (a specialist folder holds config.json + weights)")
    return json.loads(cfg.read_text())


def _experts_per_layer(config: dict[str, Any]) -> list[int]:
    from moe_specialists.models.adapters import ADAPTERS, EXPERTS_PER_LAYER_KEY, adapter_for  # torch: lazily

    if config.get("model_type") in ADAPTERS:
        return adapter_for(config).experts_per_layer(config)
    return [int(c) for c in config.get(EXPERTS_PER_LAYER_KEY) or []]


def entry_from_dir(
    name: str,
    path: str | Path,
    base: str | Path | None = None,
    plan: str | Path | None = None,
    directions: list[str] | None = None,
    languages: list[str] | None = None,
    quality: list[Quality] | None = None,
    with_checksums: bool = True,
    **extra: Any,
) -> SpecialistEntry:
    """Entry of a specialist folder (config.json + safetensors): family and experts per layer from the
    config, parameters and weight bytes from the safetensors headers (no tensor loaded), sha256 of every file.
    ``plan`` defaults to the folder's plan.json (``apply_plan`` writes one) and ``base`` to the plan's base.
    Base weight bytes: measured when ``base`` is a local folder, else the plan's record of them. No base and
    no plan: the folder is a base model (nothing saved)."""
    validate_name(name)
    folder = Path(path).resolve()
    config = _read_config(folder)
    params, nbytes = weight_stats(folder)
    if plan is None and (folder / "plan.json").is_file():
        plan = folder / "plan.json"
    base_bytes, base_experts = 0, _experts_per_layer(config)
    if plan is not None:
        recorded = Plan.load(plan).base
        base = recorded.id if base is None else base
        base_bytes, base_experts = recorded.weight_bytes, recorded.experts_per_layer
    if base is None:
        base, base_bytes = folder, nbytes
    elif Path(base).is_dir():
        base = Path(base).resolve()
        base_bytes = weight_stats(base)[1]
    return SpecialistEntry(
        name=name,
        base=str(base),
        path=str(folder),
        family=str(config.get("model_type", "unknown")),
        plan=None if plan is None else str(Path(plan).resolve()),
        directions=list(directions or []),
        languages=list(languages or []),
        experts_per_layer=_experts_per_layer(config),
        base_experts_per_layer=base_experts,
        parameters=params,
        weight_bytes=nbytes,
        base_weight_bytes=base_bytes,
        quality=list(quality or []),
        checksums=checksums(folder) if with_checksums else {},
        created_at=datetime.now(UTC),
        **extra,
    )


def plan_hash(plan: str | Path, base: str | Path | None = None) -> str:
    """Cache key of a materialised specialist: sha256 of the plan file's bytes and of the base's identity
    (resolved path when local, else the hub id; None = the plan's own base), 16 hex digits."""
    ident = "" if base is None else str(Path(base).resolve()) if Path(base).exists() else str(base)
    h = hashlib.sha256(Path(plan).read_bytes())
    h.update(b"\0" + ident.encode())
    return h.hexdigest()[:16]


def _default_apply(plan: Path, base: str | Path | None, out_dir: Path) -> Any:
    from moe_specialists.models.apply import apply_plan

    return apply_plan(plan, out_dir, base=base)


# ---------------------------------------------------------------- the registry


class Registry:
    """A folder of specialist entries; see the module docstring for the layout and the write protocol."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.entries_dir = self.root / "entries"

    # ---- plumbing ----
    def _file(self, name: str) -> Path:
        return self.entries_dir / f"{validate_name(name)}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive writer lock; also deletes temp files left by writers that died (none can be live)."""
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                for tmp in self.entries_dir.glob(".tmp-*"):
                    tmp.unlink(missing_ok=True)
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self, file: Path) -> SpecialistEntry:
        try:
            return SpecialistEntry.model_validate_json(file.read_bytes())
        except ValidationError as e:
            why = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'entry'}: {x['msg']}" for x in e.errors())
            raise CorruptEntryError(f"{file}: not a valid specialist entry ({why})") from e

    def names(self) -> list[str]:
        if not self.entries_dir.is_dir():
            return []
        return sorted(p.stem for p in self.entries_dir.glob("*.json") if _NAME_RE.fullmatch(p.stem))

    def __contains__(self, name: str) -> bool:
        return self._file(name).is_file()

    def _refuse_duplicate(self, name: str, overwrite: bool) -> None:
        if not overwrite and name in self:
            raise DuplicateSpecialistError(
                f"a specialist named {name!r} is already registered (pass overwrite=True / --overwrite to "
                f"replace it); registered: {self.names()}"
            )

    def _unknown(self, name: str) -> UnknownSpecialistError:
        return UnknownSpecialistError(
            f"no specialist named {name!r} in {self.root}; registered: {self.names() or 'none'}"
        )

    # ---- API ----
    def add(self, entry: SpecialistEntry, overwrite: bool = False) -> SpecialistEntry:
        """Register ``entry``; DuplicateSpecialistError if the name exists and ``overwrite`` is False."""
        file = self._file(entry.name)
        data = entry.model_dump_json(indent=2).encode()
        with self._locked():
            self._refuse_duplicate(entry.name, overwrite)
            atomic_write_bytes(file, data)
        return entry

    def get(self, name: str) -> SpecialistEntry:
        file = self._file(name)
        try:
            return self._load(file)
        except FileNotFoundError:
            raise self._unknown(name) from None

    def list(self) -> list[SpecialistEntry]:
        """Every entry, sorted by name (entries removed while listing are skipped)."""
        out = []
        for name in self.names():
            with contextlib.suppress(FileNotFoundError):
                out.append(self._load(self._file(name)))
        return out

    def remove(self, name: str) -> SpecialistEntry | None:
        """Unregister ``name``; returns its entry (None if the file was damaged, which is removed all the
        same). Weights on disk are left alone (a materialised folder may serve several entries)."""
        file = self._file(name)
        with self._locked():
            if not file.exists():
                raise self._unknown(name)
            try:
                entry = self._load(file)
            except CorruptEntryError:
                entry = None
            file.unlink()
            _fsync_dir(self.entries_dir)
        return entry

    def register_plan(self, name: str, plan: str | Path, overwrite: bool = False, **kw: Any) -> SpecialistEntry:
        """A plan-only specialist: no sliced copy, a view of the base (``models.plan_loading.view_of_plan``,
        under ``<root>/views``) that vLLM slices as it loads. The base's files are checked against the plan."""
        from moe_specialists.models.plan_loading import view_of_plan

        validate_name(name)
        self._refuse_duplicate(name, overwrite)
        view = view_of_plan(Plan.load(plan), self.root / "views")
        return self.add(
            entry_from_dir(name, view, plan=plan, source="plan", with_checksums=False, **kw), overwrite=overwrite
        )

    def register_dir(
        self, name: str, path: str | Path, overwrite: bool = False, **kw: Any
    ) -> SpecialistEntry:
        """``add(entry_from_dir(name, path, **kw))``: a specialist loaded from a local folder."""
        validate_name(name)
        self._refuse_duplicate(name, overwrite)
        return self.add(entry_from_dir(name, path, source="local", **kw), overwrite=overwrite)

    # ---- materialise from base + plan ----
    def materialise(
        self,
        name: str,
        plan: str | Path,
        base: str | Path | None = None,
        overwrite: bool = False,
        apply: Callable[[Path, str | Path | None, Path], Any] = _default_apply,
        **kw: Any,
    ) -> SpecialistEntry:
        """Build the specialist of ``plan`` over ``base`` (default: the plan's base) with
        ``models.apply.apply_plan`` into ``<root>/cache/<plan_hash>/`` unless it is already there, then
        register it. apply_plan writes a temp folder renamed into place, so a half-built specialist is never
        reused; a per-hash lock stops two processes from building the same one twice."""
        validate_name(name)
        self._refuse_duplicate(name, overwrite)
        plan = Path(plan).resolve()
        key = plan_hash(plan, base)
        cache = self.root / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        out = cache / key
        with open(cache / f".{key}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (out / "config.json").is_file():
                shutil.rmtree(out, ignore_errors=True)
                apply(plan, base, out)
        entry = entry_from_dir(name, out, base=base, plan=plan, plan_hash=key, source="materialised", **kw)
        return self.add(entry, overwrite=overwrite)

    # ---- hub ----
    def push(self, name: str, repo_id: str, api: Any = None, private: bool | None = None) -> str:
        """Upload the specialist's folder and its entry (as ``specialist.json``) to the hub repo ``repo_id``;
        returns the commit's URL or id. ``api``: a ``huggingface_hub.HfApi`` (default) or a stand-in."""
        entry = self.get(name)
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=entry.path,
            ignore_patterns=[".*", "**/.*", ENTRY_FILE],
            commit_message=f"specialist {name}: weights",
        )
        info = api.upload_file(
            path_or_fileobj=entry.model_dump_json(indent=2).encode(),
            path_in_repo=ENTRY_FILE,
            repo_id=repo_id,
            commit_message=f"specialist {name}: registry entry",
        )
        return str(getattr(info, "commit_url", None) or getattr(info, "oid", None) or info)

    def pull(
        self,
        repo_id: str,
        name: str,
        revision: str | None = None,
        api: Any = None,
        overwrite: bool = False,
        **kw: Any,
    ) -> SpecialistEntry:
        """Download ``repo_id`` (at ``revision``) into ``<root>/hub/<name>/`` and register it as ``name``.
        A repo pushed by ``push`` carries its entry (metadata, quality, checksums, verified here); any other
        repo is described from its files, with ``kw`` passed to ``entry_from_dir`` (base, directions, ...)."""
        validate_name(name)
        self._refuse_duplicate(name, overwrite)
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        hub = self.root / "hub"
        hub.mkdir(parents=True, exist_ok=True)
        local, tmp = hub / name, Path(tempfile.mkdtemp(prefix=f".tmp-{name}.", dir=hub))
        source = f"hub:{repo_id}@{revision or 'main'}"
        try:  # download beside, check, then swap in: a failed pull leaves an earlier one intact
            api.snapshot_download(repo_id=repo_id, revision=revision, local_dir=tmp)
            shipped = tmp / ENTRY_FILE
            remote = SpecialistEntry.model_validate_json(shipped.read_bytes()) if shipped.is_file() else None
            if remote is not None:
                verify_checksums(tmp, remote.checksums)
            shutil.rmtree(local, ignore_errors=True)
            os.replace(tmp, local)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if remote is not None:
            plan = local / "plan.json"
            update = {"name": name, "path": str(local.resolve()), "source": source}
            update["plan"] = str(plan.resolve()) if plan.is_file() else None
            entry = remote.model_copy(update=update)
        else:
            kw.setdefault("base", repo_id)
            entry = entry_from_dir(name, local, source=source, **kw)
        return self.add(entry, overwrite=overwrite)
