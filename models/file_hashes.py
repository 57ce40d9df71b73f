"""sha256 of checkpoint files, read once. ``FileHashes`` keeps each hash against the file's stamp (size, mtime,
ctime, inode, device of its real path) in a JSON file and answers from it while the stamp stays the same; any
change to the file, even one that puts the old mtime back, moves its ctime and gets it hashed afresh. A hash
is kept only once the file has been still for ``RACY_S`` (a file written within the clock's granularity of
its stamp could change again unseen: git's "racily clean" entries).

A file of the hub cache needs no reading at all: huggingface_hub stores every LFS file (every safetensors
shard) as ``models--org--name/blobs/<sha256>`` under the sha256 the hub publishes for it, and links it from
``snapshots/<revision>/``; the blob's name is taken as its hash the first time it is seen, and its stamp is kept
like any other's (a blob edited in place after that is hashed). Other blobs are named by their git sha1 and
hashed as usual.

The default file is ``$MOE_CACHE_DIR/file-hashes.json`` (default ``$XDG_CACHE_HOME/moe-specialists``,
``~/.cache/moe-specialists``). It is advisory: unreadable, it counts as empty; unwritable, nothing is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

RACY_S = 2.0
HUB_LFS_BLOB = re.compile(r"[0-9a-f]{64}")
HUB_REPO_PREFIXES = ("models--", "datasets--", "spaces--")
CACHE_ENV = "MOE_CACHE_DIR"


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moe-specialists"
    return Path(root) / "file-hashes.json"


def hub_blob_sha256(real: Path) -> str | None:
    """The sha256 a hub-cache LFS blob is named by (``.../models--org--name/blobs/<sha256>``), else None."""
    in_hub = real.parent.name == "blobs" and real.parent.parent.name.startswith(HUB_REPO_PREFIXES)
    return real.name if in_hub and HUB_LFS_BLOB.fullmatch(real.name) else None


def stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class FileHashes:
    """``sha256(path)`` answered from ``cache`` (a JSON file; None: every file hashed, nothing kept) where the
    file's stamp is the one kept with its hash; ``save()`` writes what was learnt (atomically, merged with what
    another process wrote meanwhile)."""

    def __init__(self, cache: Path | None, racy_s: float | None = None):
        self.cache, self.racy_s = cache, RACY_S if racy_s is None else racy_s
        self.known = self._read() if cache is not None else {}
        self.learnt: dict[str, dict] = {}

    def _read(self) -> dict[str, dict]:
        try:
            known = json.loads(self.cache.read_text())  # type: ignore[union-attr]
        except (OSError, ValueError):
            return {}
        return known if isinstance(known, dict) else {}

    def sha256(self, path: Path) -> str:
        real = Path(path).resolve()
        before = stamp(real.stat())
        entry = self.known.get(str(real))
        if isinstance(entry, dict) and entry.get("stamp") == before and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        sha = hub_blob_sha256(real) if entry is None else None
        sha = sha or file_sha256(real)
        settled = time.time() - max(before[1], before[2]) / 1e9 >= self.racy_s
        if settled and stamp(real.stat()) == before:  # unchanged while it was read
            self.known[str(real)] = self.learnt[str(real)] = {"stamp": before, "sha256": sha}
        return sha

    def save(self) -> None:
        if self.cache is None or not self.learnt:
            return
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            merged = self._read() | self.learnt
            tmp = self.cache.with_name(f".{self.cache.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            tmp.write_text(json.dumps(merged, indent=1))
            tmp.replace(self.cache)
        except OSError as e:
            log.warning("file hashes not kept in %s: %s", self.cache, e)
        self.learnt = {}
