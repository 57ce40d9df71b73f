"""The hash cache: each file read once while it is unchanged, any change (a rewrite that restores the mtime
included) read again, hub-cache blobs named by their sha256 never read, and apply's default verification
through it: the second apply of a base reads no shard to verify it, a rewritten shard is still refused."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from moe_specialists.models import file_hashes
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.file_hashes import FileHashes, hub_blob_sha256
from moe_specialists.models.plan import plan_from_kept
from tests.tiny import save_tiny


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Names of the files ``file_sha256`` reads from now on."""
    read: list[str] = []
    real = file_hashes.file_sha256
    monkeypatch.setattr(file_hashes, "file_sha256", lambda path: read.append(Path(path).name) or real(path))
    return read


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """New bytes of the same size, the old mtime put back (what ``cp -p`` or a careless tool leaves)."""
    st = path.stat()
    time.sleep(0.05)  # past the coarse clock's granularity: the ctime moves
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def test_a_file_is_read_once_and_again_after_any_change(tmp_path, reads):
    f, cache = tmp_path / "shard.safetensors", tmp_path / "hashes.json"
    f.write_bytes(b"abcd" * 1000)
    hashes = FileHashes(cache, racy_s=0)
    assert hashes.sha256(f) == hashes.sha256(f) == sha(b"abcd" * 1000)
    hashes.save()
    assert reads == ["shard.safetensors"]
    assert FileHashes(cache).sha256(f) == sha(b"abcd" * 1000) and len(reads) == 1  # kept in the file
    rewrite_keeping_mtime(f, b"abce" * 1000)
    assert FileHashes(cache, racy_s=0).sha256(f) == sha(b"abce" * 1000) and len(reads) == 2


def test_a_file_just_written_is_not_kept(tmp_path, reads):
    """Racily clean: a file whose stamp is younger than ``racy_s`` could change again within one clock tick."""
    f, cache = tmp_path / "shard.safetensors", tmp_path / "hashes.json"
    f.write_bytes(b"x")
    hashes = FileHashes(cache, racy_s=60)
    hashes.sha256(f)
    hashes.sha256(f)
    hashes.save()
    assert len(reads) == 2 and not cache.exists()


def test_an_unreadable_cache_counts_as_empty_and_an_unwritable_one_keeps_nothing(tmp_path, reads):
    f = tmp_path / "shard.safetensors"
    f.write_bytes(b"y")
    broken = tmp_path / "hashes.json"
    broken.write_text("{ half-written")
    assert FileHashes(broken, racy_s=0).sha256(f) == sha(b"y")
    blocked = tmp_path / "file" / "hashes.json"
    (tmp_path / "file").write_text("not a folder")
    hashes = FileHashes(blocked, racy_s=0)
    hashes.sha256(f)
    hashes.save()  # a warning, no error
    assert len(reads) == 2


def hub_snapshot(root: Path, files: dict[str, bytes], lfs_name=sha) -> Path:
    """huggingface_hub's cache layout: ``models--org--name/blobs/<sha256>`` for LFS files (others by their git
    sha1), ``snapshots/<revision>/<file>`` linking to them, ``refs/main``."""
    repo = root / "models--org--base"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for name, data in files.items():
        blob = lfs_name(data) if name.endswith(".safetensors") else hashlib.sha1(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snap / name).symlink_to(Path("../../blobs") / blob)
    return snap


def test_a_hub_cache_blob_is_known_by_its_name_until_it_changes(tmp_path, reads):
    snap = hub_snapshot(tmp_path / "hub", {"model.safetensors": b"weights" * 100, "config.json": b"{}"})
    assert hub_blob_sha256((snap / "model.safetensors").resolve()) == sha(b"weights" * 100)
    assert hub_blob_sha256((snap / "config.json").resolve()) is None  # a git sha1 name: not a sha256
    cache = tmp_path / "hashes.json"
    hashes = FileHashes(cache, racy_s=0)
    assert hashes.sha256(snap / "model.safetensors") == sha(b"weights" * 100)
    assert hashes.sha256(snap / "config.json") == sha(b"{}")
    hashes.save()
    assert reads == [(snap / "config.json").resolve().name]  # the shard was not read
    rewrite_keeping_mtime((snap / "model.safetensors").resolve(), b"WEIGHTS" * 100)  # edited in place
    assert FileHashes(cache, racy_s=0).sha256(snap / "model.safetensors") == sha(b"WEIGHTS" * 100)
    assert len(reads) == 2


def test_a_blob_outside_a_hub_cache_is_read(tmp_path, reads):
    data = b"z" * 10
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / sha(data)).write_bytes(data)
    assert FileHashes(None).sha256(tmp_path / "blobs" / sha(data)) == sha(data) and len(reads) == 1


def test_apply_verifies_a_base_once_and_still_refuses_a_rewritten_shard(tmp_path, reads, monkeypatch):
    """The default (verified) apply: the plan's hashes were computed when it was made (kept), so neither apply
    reads a shard to verify it; a shard rewritten with its mtime restored is read and refused."""
    monkeypatch.setattr(file_hashes, "RACY_S", 0)
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    base = save_tiny("qwen3_moe", tmp_path / "base")
    plan = plan_from_kept(base, [[0, 2, 4, 6]] * 4)
    made = len(reads)
    assert made >= 1 and json.loads((tmp_path / "cache" / "file-hashes.json").read_text())
    apply_plan(plan, tmp_path / "one")
    apply_plan(plan, tmp_path / "two")
    assert len(reads) == made
    shard = next(base.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    rewrite_keeping_mtime(shard, bytes(data))
    with pytest.raises(ValueError, match="differs from the checkpoint the plan was made for"):
        apply_plan(plan, tmp_path / "three")
    assert reads[made:] == [shard.name] and not (tmp_path / "three").exists()
