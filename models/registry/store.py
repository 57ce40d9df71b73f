"""Where entries are kept: the ``Registry`` (add, get, list, remove, register a folder or a plan), atomic
writes under a lock, and the one default registry folder (``MOE_REGISTRY_DIR``).

Storage: one JSON file per entry, written to a temporary file in the same folder, fsynced, then renamed over
the target (``os.replace``: atomic on POSIX), with an exclusive ``fcntl.flock`` around every write. Why not
SQLite: an entry is a small document read at gateway start and written a handful of times per specialist, so
a database buys nothing a rename does not already give (a reader sees the old file or the new one, never a
half), while plain files stay readable and diffable, are the same JSON that travels to the hub beside the
weights, and a damaged entry cannot take the others down. The lock serialises writers so that "add unless it
exists" is one step (concurrent adds never overwrite each other); readers take no lock. A writer killed
mid-write leaves only a ``.tmp-*`` file, which readers ignore and the next writer deletes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moe_specialists.models.errors import describe_validation
from moe_specialists.models.plan import Plan
from moe_specialists.models.registry.entries import NAME_RE, SpecialistEntry, entry_from_dir, validate_name
from moe_specialists.models.registry.errors import (
    CorruptEntryError,
    DuplicateSpecialistError,
    UnknownSpecialistError,
)

# The one registry of `registry ...`, `prune --register` and `serve`: this variable, else the default folder.
REGISTRY_ENV = "MOE_REGISTRY_DIR"
RETIRED_REGISTRY_VARIABLES = ("MOE_SPECIALISTS_REGISTRY",)  # read by the registry CLI before 2026-12


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


# ---------------------------------------------------------------- files


def fsync_dir(path: Path) -> None:
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
    fsync_dir(path.parent)


# ---------------------------------------------------------------- the registry


class Registry:
    """A folder of specialist entries; see the module docstring for the write protocol and the package's for
    the layout. Materialising (``materialise.materialise``) and the hub (``hub.push`` / ``hub.pull``) are
    functions over a Registry."""

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
            why = describe_validation(e, where="entry")
            raise CorruptEntryError(f"{file}: not a valid specialist entry ({why})") from e

    def names(self) -> list[str]:
        if not self.entries_dir.is_dir():
            return []
        return sorted(p.stem for p in self.entries_dir.glob("*.json") if NAME_RE.fullmatch(p.stem))

    def __contains__(self, name: str) -> bool:
        return self._file(name).is_file()

    def refuse_duplicate(self, name: str, overwrite: bool) -> None:
        """DuplicateSpecialistError when ``name`` is registered and ``overwrite`` is False (checked before
        anything is built for it; ``add`` checks again under the lock)."""
        validate_name(name)
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
            self.refuse_duplicate(entry.name, overwrite)
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
            fsync_dir(self.entries_dir)
        return entry

    def register_plan(self, name: str, plan: str | Path, overwrite: bool = False, **kw: Any) -> SpecialistEntry:
        """A plan-only specialist: no sliced copy, a view of the base (``models.plan_loading.view_of_plan``,
        under ``<root>/views``) that vLLM slices as it loads. The base's files are checked against the plan."""
        from moe_specialists.models.plan_loading import view_of_plan  # torch: only when a plan is registered

        self.refuse_duplicate(name, overwrite)
        view = view_of_plan(Plan.load(plan), self.root / "views")
        return self.add(
            entry_from_dir(name, view, plan=plan, source="plan", with_checksums=False, **kw), overwrite=overwrite
        )

    def register_dir(self, name: str, path: str | Path, overwrite: bool = False, **kw: Any) -> SpecialistEntry:
        """``add(entry_from_dir(name, path, **kw))``: a specialist loaded from a local folder."""
        self.refuse_duplicate(name, overwrite)
        return self.add(entry_from_dir(name, path, source="local", **kw), overwrite=overwrite)
