"""Hub push/pull against ``FakeHub`` (the hub is unreachable here): the entry travels, revisions, tampering
refused, plain repos described from their files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from moe_specialists.models.registry.entries import ENTRY_FILE, Quality
from moe_specialists.models.registry.errors import ChecksumError, DuplicateSpecialistError
from moe_specialists.models.registry.hub import pull, push
from moe_specialists.models.registry.store import Registry
from tests.models.registry.fake_hub import FakeHub


def test_push_pull_round_trip(tiny: SimpleNamespace, tmp_path: Path, hub: FakeHub) -> None:
    here = Registry(tmp_path / "here")
    q = Quality(metric="chrF", direction="en-de", score=48.0)
    e = here.register_dir("tiny", tiny.spec, base=tiny.base, directions=["en-de"], quality=[q])
    url = push(here, "tiny", "me/tiny-en-de", api=hub)
    assert url.startswith("fake://me/tiny-en-de/commit/")

    there = Registry(tmp_path / "there")
    got = pull(there, "me/tiny-en-de", "tiny-copy", api=hub)
    assert got == there.get("tiny-copy")
    assert got.name == "tiny-copy" and got.source == "hub:me/tiny-en-de@main"
    assert Path(got.path) == (tmp_path / "there" / "hub" / "tiny-copy").resolve()
    same = {"name", "path", "source", "created_at"}
    assert got.model_dump(exclude=same) == e.model_dump(exclude=same)
    assert got.created_at == e.created_at  # the entry travelled, it was not rebuilt
    for f in e.checksums:
        assert (Path(got.path) / f).read_bytes() == (tiny.spec / f).read_bytes()
    assert (Path(got.path) / ENTRY_FILE).is_file()


def test_pull_revision_tampering_and_plain_repos(tiny: SimpleNamespace, tmp_path: Path, hub: FakeHub) -> None:
    here = Registry(tmp_path / "here")
    here.register_dir("tiny", tiny.spec, base=tiny.base, directions=["en-de"])
    push(here, "tiny", "me/tiny", api=hub)
    first = hub.heads["me/tiny"][-1]
    here.register_dir("tiny", tiny.spec, base=tiny.base, directions=["de-en"], overwrite=True)
    push(here, "tiny", "me/tiny", api=hub)

    there = Registry(tmp_path / "there")
    assert pull(there, "me/tiny", "old", revision=first, api=hub).directions == ["en-de"]
    assert pull(there, "me/tiny", "new", api=hub).directions == ["de-en"]
    with pytest.raises(DuplicateSpecialistError):
        pull(there, "me/tiny", "new", api=hub)
    with pytest.raises(FileNotFoundError):
        pull(there, "me/absent", "absent", api=hub)

    # a corrupted file on the hub: refused, nothing registered, the earlier pull untouched
    latest = hub.root / "me/tiny" / hub.heads["me/tiny"][-1]
    with open(latest / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ChecksumError, match="model.safetensors"):
        pull(there, "me/tiny", "new", api=hub, overwrite=True)
    assert there.get("new").directions == ["de-en"] and Path(there.get("new").path).is_dir()
    assert not [p for p in (tmp_path / "there" / "hub").iterdir() if p.name.startswith(".tmp-")]

    # a repo that is not a pushed specialist (e.g. a base model): described from its files
    hub.create_repo("org/base-model")
    hub.upload_folder(repo_id="org/base-model", folder_path=tiny.base)
    base = pull(there, "org/base-model", "base", api=hub)
    assert base.base == "org/base-model" and base.experts_per_layer == [8, 8]
    assert base.source == "hub:org/base-model@main" and base.parameters == 527_232
